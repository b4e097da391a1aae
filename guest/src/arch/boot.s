/* Two ways in, one way on (start64 -> rust_main(arg, entry)):
 * - PVH: QEMU's -kernel loader jumps to pvh_start32 in 32-bit protected mode
 *   with paging off and %ebx = the physical address of struct hvm_start_info
 *   (entry = ENTRY_PVH).
 * - ROM: the image is the BIOS (-bios, no firmware at all); the reset vector
 *   at the bottom of this file gets to long mode, copies the kernel from ROM
 *   to 1 MiB and jumps to start64 (entry = ENTRY_ROM, the boot info comes
 *   from fw_cfg). linker-rom.ld builds that image; linker.ld drops .rom.*.
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
/* The second argument of rust_main; bootinfo.rs has the same numbers. */
.set ENTRY_PVH, 1
.set ENTRY_ROM, 2

.section .text.boot, "ax"
.code32
.global pvh_start32
pvh_start32:
    cli
    cld
    movl $ENTRY_PVH, %esi
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
    movl %esi, %esi
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

/* ---------------------------------------------------------------------------
 * Firmware-less entry. At reset the CPU is in real mode with CS base
 * 0xFFFF0000 and IP 0xFFF0, i.e. at the last 16 bytes of the ROM. All ROM
 * code and data are then used through the ISA-BIOS alias of the ROM's last
 * 128 KiB at 0xE0000-0xFFFFF (ROM_ALIAS below), as SeaBIOS does: executing
 * at 0xFFFFxxxx after leaving real mode wedges kvm_pvm, and the alias sits
 * inside the low identity map the kernel uses anyway.
 * ------------------------------------------------------------------------- */
.set ROM_ALIAS, 0xFFF00000             /* ROM address - ROM_ALIAS = alias */
.set RESET_CS_BASE, 0xFFFF0000

.section .rom.text, "ax"
.code16
.global rom_start16
rom_start16:
    cli
    cld
    /* The far jump at the reset vector made the CS base 0xF0000. */
    lgdtl %cs:(rom_gdt_ptr - RESET_CS_BASE)
    /* PE only; the reset value also has CD|NW set, cleared below. */
    movl $(CR0_PE | CR0_ET), %eax
    movl %eax, %cr0
    ljmpl $0x18, $(rom_start32 - ROM_ALIAS)

.code32
rom_start32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl $CR4_PAE, %eax
    movl %eax, %cr4
    /* A map of the first 4 MiB in ROM: enough for the alias and the kernel. */
    movl $(rom_pml4 - ROM_ALIAS), %eax
    movl %eax, %cr3
    movl $MSR_EFER, %ecx
    rdmsr
    orl $EFER_LME, %eax
    wrmsr
    movl $(CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG), %eax
    movl %eax, %cr0
    ljmp $0x08, $(rom_start64 - ROM_ALIAS)

.code64
rom_start64:
    /* Copy the kernel to its link address with paging on: the copy runs at
     * native speed even where unpaged code is emulated. */
    movl $(__rom_image_lma - ROM_ALIAS), %esi
    movl $__image_start, %edi
    movl $__load_end, %ecx
    subl %edi, %ecx
    shrl $3, %ecx
    rep movsq
    /* The kernel's own 4 GiB identity map, now that it is in RAM. */
    movl $boot_pml4, %eax
    movq %rax, %cr3
    xorl %ebx, %ebx
    movl $ENTRY_ROM, %esi
    /* start64 is out of rel32 reach from the top of 4 GiB. */
    movl $start64, %eax
    jmp *%rax

/* The Accessed bits are preset: the CPU would otherwise try to set them in
 * this read-only table, which kvm_pvm retries forever (TCG drops the write). */
.balign 16
rom_gdt:
    .quad 0
    .quad 0x00af9b000000ffff    /* 0x08: 64-bit code, DPL0, accessed */
    .quad 0x00cf93000000ffff    /* 0x10: data, accessed */
    .quad 0x00cf9b000000ffff    /* 0x18: 32-bit code, accessed */
rom_gdt_end:
.balign 4
rom_gdt_ptr:
    .word rom_gdt_end - rom_gdt - 1
    .long rom_gdt - ROM_ALIAS

/* 2 MiB pages (kvm_pvm triple-faults on 1 GiB ones), A/D bits preset. */
.section .rom.pagetables, "a"
.balign 4096
rom_pml4:
    .quad rom_pdpt - ROM_ALIAS + TABLE
    .fill 511, 8, 0
rom_pdpt:
    .quad rom_pd - ROM_ALIAS + TABLE
    .fill 511, 8, 0
rom_pd:
    .quad 0x000000 | 0xE3
    .quad 0x200000 | 0xE3
    .fill 510, 8, 0

/* The reset vector, at 0xFFFFFFF0 (linker-rom.ld): reload CS with the
 * real-mode base 0xF0000, where the alias of the ROM's top 64 KiB begins. */
.section .rom.reset, "ax"
.code16
    ljmp $0xF000, $(rom_start16 - RESET_CS_BASE)
    .balign 16, 0xf4
.code64                         /* the asm that follows (traps.s) is 64-bit */
