/* PVH entry: QEMU's -kernel loader jumps here in 32-bit protected mode with
 * paging off and %ebx = the physical address of struct hvm_start_info.
 *
 * Under kvm_pvm every instruction run with paging off is emulated, so the
 * 32-bit path only switches modes: the page tables are static data with the
 * accessed/dirty bits preset, and .bss is cleared once in 64-bit mode.
 * AT&T syntax. */

/* XEN_ELFNOTE_PHYS32_ENTRY (18). QEMU reads the desc as a size_t, so it is a
 * .quad, and the section stays 4-aligned (see linker.ld). */
.section .note.pvh, "a", @note
.balign 4
.long 4                         /* namesz */
.long 8                         /* descsz */
.long 18                        /* type */
.asciz "Xen"
.balign 4
.quad pvh_start32
.balign 4

.set CR0_PE, 1 << 0
.set CR0_MP, 1 << 1
.set CR0_ET, 1 << 4
.set CR0_NE, 1 << 5
.set CR0_WP, 1 << 16
.set CR0_PG, 1 << 31
.set CR4_PAE, 1 << 5
.set MSR_EFER, 0xC0000080
.set EFER_LME, 1 << 8

.section .text.boot, "ax"
.code32
.global pvh_start32
pvh_start32:
    cli
    cld
    lgdt boot_gdt_ptr
    movl $CR4_PAE, %eax
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3
    movl $MSR_EFER, %ecx
    rdmsr
    orl $EFER_LME, %eax
    wrmsr
    movl $(CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG), %eax
    movl %eax, %cr0
    ljmp $0x08, $start64

.code64
start64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorl %eax, %eax
    movw %ax, %fs
    movw %ax, %gs
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    shrl $3, %ecx
    rep stosq
    movq $boot_stack_top, %rsp
    /* The upper halves of the registers are undefined after the mode switch. */
    movl %ebx, %edi
    xorl %ebp, %ebp
    call rust_main
1:  cli
    hlt
    jmp 1b

/* Only used to get into long mode; arch/gdt.rs loads the real GDT with the
 * same kernel selectors (0x08 code, 0x10 data). */
.section .rodata.boot, "a"
.balign 16
boot_gdt:
    .quad 0
    .quad 0x00af9b000000ffff    /* 0x08: 64-bit code, DPL0, accessed */
    .quad 0x00cf93000000ffff    /* 0x10: data, accessed */
boot_gdt_end:
.balign 4
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

/* Identity map of the first 4 GiB with 2 MiB pages. The upper levels allow
 * user access so that a single 4 KiB leaf can be made user-accessible
 * (arch/paging.rs); the 2 MiB leaves are supervisor-only.
 * Leaves: P|RW|A|D|PS = 0xE3; 0-1 GiB write-back, 1-4 GiB uncached (+PCD|PWT),
 * refined from the firmware memory map at run time. */
.set TABLE, 0x27                /* P|RW|US|A */
.section .data.pagetables, "aw"
.balign 4096
.global boot_pml4
boot_pml4:
    .quad boot_pdpt + TABLE
    .fill 511, 8, 0
.global boot_pdpt
boot_pdpt:
    .quad boot_pd + 0x0000 + TABLE
    .quad boot_pd + 0x1000 + TABLE
    .quad boot_pd + 0x2000 + TABLE
    .quad boot_pd + 0x3000 + TABLE
    .fill 508, 8, 0
.global boot_pd
boot_pd:
.set i, 0
.rept 2048
.if i < 512
    .quad (i << 21) | 0xE3
.else
    .quad (i << 21) | 0xFB
.endif
.set i, i + 1
.endr

.section .bss.boot_stack, "aw", @nobits
.balign 4096
/* Unmapped by paging::init, so an overflowing stack faults instead of
 * silently overwriting whatever lies below it. */
.global boot_stack_guard
boot_stack_guard:
    .skip 4096
boot_stack:
    .skip 65536
.global boot_stack_top
boot_stack_top:
