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

	.section .bss
	.balign	16
stack_bottom:
	.space	65536
stack_top:

	.section .note.GNU-stack, "", @progbits
