/* Exception entry stubs for all 32 architectural vectors. Each stub makes the
 * frame uniform (a zero error code where the CPU pushes none, then the vector)
 * and joins trap_common, which saves the general registers and calls
 * trap_dispatch(&mut TrapFrame). The dispatcher may rewrite the saved RIP,
 * RSP, CS, SS and registers; iretq resumes wherever the frame then says.
 * Intel syntax. */

.macro TRAP_NOERR vec
trap_stub_\vec:
    push 0
    push \vec
    jmp trap_common
.endm
.macro TRAP_ERR vec
trap_stub_\vec:
    push \vec
    jmp trap_common
.endm

.section .text.traps, "ax"
TRAP_NOERR 0
TRAP_NOERR 1
TRAP_NOERR 2
TRAP_NOERR 3
TRAP_NOERR 4
TRAP_NOERR 5
TRAP_NOERR 6
TRAP_NOERR 7
TRAP_ERR   8
TRAP_NOERR 9
TRAP_ERR   10
TRAP_ERR   11
TRAP_ERR   12
TRAP_ERR   13
TRAP_ERR   14
TRAP_NOERR 15
TRAP_NOERR 16
TRAP_ERR   17
TRAP_NOERR 18
TRAP_NOERR 19
TRAP_NOERR 20
TRAP_ERR   21
TRAP_NOERR 22
TRAP_NOERR 23
TRAP_NOERR 24
TRAP_NOERR 25
TRAP_NOERR 26
TRAP_NOERR 27
TRAP_NOERR 28
TRAP_ERR   29
TRAP_ERR   30
TRAP_NOERR 31

/* 7 quads from the CPU and the stub + 15 registers = 176 bytes, and the CPU
 * aligns RSP to 16 before pushing: the call below sees an aligned stack. */
trap_common:
    push rax
    push rcx
    push rdx
    push rbx
    push rbp
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    mov rdi, rsp
    cld
    call trap_dispatch
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rbp
    pop rbx
    pop rdx
    pop rcx
    pop rax
    add rsp, 16
    iretq

.section .rodata.traps, "a"
.balign 8
.global trap_stubs
trap_stubs:
.irp vec, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad trap_stub_\vec
.endr
