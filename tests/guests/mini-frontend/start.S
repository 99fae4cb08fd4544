/* SPDX-License-Identifier: Apache-2.0 */
/*
 * start.S - entry of the mini frontend, in 64-bit long mode as the VMM enters an ELF
 * (Vm::boot_elf64): identity map of [0, 4 GiB), RSI = boot_params, interrupts off.
 *
 * Only the boot CPU runs; the program speaks for one CPU (hello nr_cpus = 1).
 *
 * A reset re-enters here with RAM as it was, so .bss is cleared on every entry (there
 * is no initialised .data to restore: the linker script refuses any). The stack is in
 * .bss and used only once it is cleared.
 */
	.code64
	.section .text.start, "ax"
	.globl _start
_start:
	cli
	cld
	mov	%rsi, %r12		/* boot_params, kept across the clearing */
	/*
	 * Every vCPU enters here; only the one with APIC ID 0 (CPUID 1: EBX[31:24]) runs
	 * the program, the others stop for good before touching memory.
	 */
	mov	$1, %eax
	cpuid
	shr	$24, %ebx
	jnz	1f
	lea	__bss_start(%rip), %rdi
	lea	__bss_end(%rip), %rcx
	sub	%rdi, %rcx
	xor	%eax, %eax
	rep stosb
	lea	stack_top(%rip), %rsp
	xor	%ebp, %ebp
	mov	%r12, %rdi
	call	mini_main
1:	cli
	hlt
	jmp	1b

/*
 * Exception stubs, 16 bytes apart (idle.c points vector v at exception_stubs + 16 v):
 * push the vector, report it and the faulting RIP, halt. An error code, when the CPU
 * pushed one, sits between the vector and the RIP.
 */
	.balign	16
	.globl	exception_stubs
exception_stubs:
	.set	vector, 0
	.rept	32
	.balign	16
	pushq	$vector
	jmp	exception_common
	.set	vector, vector + 1
	.endr

exception_common:
	mov	(%rsp), %rdi		/* vector */
	mov	8(%rsp), %rsi		/* RIP, or the error code for vectors that have one */
	/* Vectors with an error code: 8, 10-14, 17, 21, 29, 30. */
	mov	$0x60227d00, %eax
	bt	%edi, %eax
	jnc	3f
	mov	16(%rsp), %rsi
3:	and	$-16, %rsp
	call	mini_exception
4:	cli
	hlt
	jmp	4b

/* Every other vector: acknowledge it at the x2APIC and return. */
	.balign	16
	.globl	irq_stub
irq_stub:
	push	%rax
	push	%rcx
	push	%rdx
	mov	$0x80b, %ecx		/* x2APIC EOI */
	xor	%eax, %eax
	xor	%edx, %edx
	wrmsr
	pop	%rdx
	pop	%rcx
	pop	%rax
	iretq

	.section .bss
	.balign	16
stack_bottom:
	.space	65536
stack_top:

	.section .note.GNU-stack, "", @progbits
