/*
 * guest-kit entry points, GDT, page tables and interrupt stubs.
 *
 * The image is linked (and must be loaded) at physical 0x100000. The first
 * 0x200 bytes (.head.text) are 32-bit code; offset 0x200 is the 64-bit
 * bzImage entry, because the 64-bit Linux boot protocol jumps to
 * load address + 0x200.
 *
 *   0x100000  entry32_bzimage  32-bit boot protocol (ESI = boot_params)
 *   ........  pvh_start        PVH entry (EBX = hvm_start_info), from the
 *                              XEN_ELFNOTE_PHYS32_ENTRY note
 *   0x100200  entry64_bzimage  64-bit boot protocol (RSI = boot_params)
 *
 * All paths end in common64, which loads our GDT, page tables and stack,
 * clears .bss and calls kmain(info_paddr, via).
 */

#define SEL_CODE64  0x08
#define SEL_DATA    0x10

#define VIA_PVH        0
#define VIA_BZIMAGE    1
#define VIA_BZIMAGE32  2

#define MSR_EFER    0xc0000080
#define EFER_LME    (1 << 8)
#define CR0_PE      (1 << 0)
#define CR0_PG      (1 << 31)
#define CR4_PAE     (1 << 5)
#define CR4_SMEP_SMAP ((1 << 20) | (1 << 21))

	.section .head.text, "ax"

/* ---------------- 32-bit entries (paging off, flat segments) ------------- */
	.code32
	.globl entry32_bzimage
entry32_bzimage:			/* must stay at offset 0 (code32_start) */
	cli
	cld
	movl	%esi, %edi		/* boot_params */
	movl	$VIA_BZIMAGE32, %ebp
	jmp	to_long_mode

	.globl pvh_start
pvh_start:
	cli
	cld
	movl	%ebx, %edi		/* hvm_start_info */
	movl	$VIA_PVH, %ebp

	/* EDI = info pointer, EBP = via; both survive into 64-bit mode. */
to_long_mode:
	/* A 6-byte lgdt in 32-bit mode reads the low half of the 64-bit base. */
	lgdt	gdt_ptr
	movl	$SEL_DATA, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movl	%eax, %fs
	movl	%eax, %gs

	movl	%cr4, %eax
	orl	$CR4_PAE, %eax
	movl	%eax, %cr4
	movl	$pml4, %eax
	movl	%eax, %cr3
	movl	$MSR_EFER, %ecx
	rdmsr
	orl	$EFER_LME, %eax
	wrmsr
	movl	%cr0, %eax
	orl	$(CR0_PE | CR0_PG), %eax
	movl	%eax, %cr0		/* now in IA-32e compatibility mode */
	ljmp	$SEL_CODE64, $from32

	.code64
from32:
	movl	%edi, %r12d		/* upper halves are undefined after the */
	movl	%ebp, %r13d		/* switch: 32-bit moves zero-extend     */
	jmp	common64

	/* Pad (with zeros, never 0xcc) up to the 64-bit entry. .org fails to
	 * assemble if the code above ever grows past 0x200. */
	.org	0x200, 0

/* ---------------- 64-bit bzImage entry: load address + 0x200 ------------- */
	.globl entry64_bzimage
entry64_bzimage:
	cli
	cld
	movq	%rsi, %r12		/* boot_params */
	movl	$VIA_BZIMAGE, %r13d
	/* fall through */

/* R12 = info pointer, R13 = via. Runs on the loader's identity map or ours. */
common64:
	lgdt	gdt_ptr(%rip)
	movl	$SEL_DATA, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movl	%eax, %fs
	movl	%eax, %gs
	leaq	pml4(%rip), %rax	/* same identity map, so the switch is */
	movq	%rax, %cr3		/* harmless under the loader's tables  */
	/* Ring-3 code (run_user) uses the same pages: SMEP/SMAP, if a loader
	 * left them on, would fault on that. */
	movq	%cr4, %rax
	testl	$CR4_SMEP_SMAP, %eax
	jz	3f
	andq	$~CR4_SMEP_SMAP, %rax
	movq	%rax, %cr4
3:
	leaq	stack_top(%rip), %rsp
	pushq	$SEL_CODE64		/* reload CS with our selector */
	leaq	1f(%rip), %rax
	pushq	%rax
	lretq
1:
	/* Zero .bss (the stack lives there but holds nothing yet). */
	leaq	_bss_start(%rip), %rdi
	leaq	_bss_end(%rip), %rcx
	subq	%rdi, %rcx
	shrq	$3, %rcx
	xorl	%eax, %eax
	rep stosq

	movq	%r12, %rdi
	movl	%r13d, %esi
	call	kmain
2:	cli
	hlt
	jmp	2b

/* ---------------- interrupt stubs ---------------------------------------- */
/*
 * One 16-byte stub per vector (isr_stubs + 16 * vec). Vectors where the CPU
 * pushes no error code push a zero so the frame layout is uniform.
 */
	.text
	.balign	16
	.globl	isr_stubs
isr_stubs:
	.set	vec, 0
	.rept	256
	.balign	16
	.if !((vec == 8) || (vec >= 10 && vec <= 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30))
	pushq	$0
	.endif
	pushq	$vec
	jmp	isr_common
	.set	vec, vec + 1
	.endr

/*
 * Stack here: vec, err, rip, cs, rflags, rsp, ss. The CPU aligned RSP to 16
 * before pushing its 5 words, so after 7 words + 9 saved registers RSP is
 * 16-byte aligned again for the C call. Layout matches struct isr_frame.
 */
isr_common:
	pushq	%rax
	pushq	%rcx
	pushq	%rdx
	pushq	%rsi
	pushq	%rdi
	pushq	%r8
	pushq	%r9
	pushq	%r10
	pushq	%r11
	cld
	movq	%rsp, %rdi
	call	isr_dispatch
	popq	%r11
	popq	%r10
	popq	%r9
	popq	%r8
	popq	%rdi
	popq	%rsi
	popq	%rdx
	popq	%rcx
	popq	%rax
	addq	$16, %rsp		/* vec, err */
	iretq

/* ---------------- ring 3 ------------------------------------------------ */
/*
 * uint64_t run_user(uint64_t (*fn)(void *), void *arg, void *ustack_top)
 *
 * Runs fn(arg) at CPL3 (CS 0x1b, SS 0x23, RFLAGS IF=1 IOPL=3 so port I/O
 * works) on the given stack and returns its result. Interrupts taken in
 * ring 3 run on the TSS RSP0 stack (hw.c), not on ours. fn ends by
 * returning into user_trampoline, which executes the ud2 at user_exit_insn
 * (a software "int n" from ring 3 raises #UD on this host, an exception is
 * always delivered); isr_dispatch recognises that #UD from CPL3 at that
 * address and calls user_return, which abandons the exception frame and
 * resumes here with the saved registers and RFLAGS.
 */
#define USER_CS     0x1b
#define USER_DS     0x23
#define USER_RFLAGS 0x3202		/* IOPL=3, IF=1, reserved bit 1 */

	.text
	.globl	run_user
run_user:
	pushq	%rbp
	pushq	%rbx
	pushq	%r12
	pushq	%r13
	pushq	%r14
	pushq	%r15
	pushfq
	movq	%rsp, user_saved_rsp(%rip)
	pushq	$USER_DS		/* iretq frame: SS, RSP, RFLAGS, CS, RIP */
	pushq	%rdx
	pushq	$USER_RFLAGS
	pushq	$USER_CS
	leaq	user_trampoline(%rip), %rax
	pushq	%rax
	movq	%rdi, %rax		/* fn */
	movq	%rsi, %rdi		/* arg */
	iretq

user_trampoline:			/* CPL3 from here */
	call	*%rax
	movq	%rax, %rdi
	.globl	user_exit_insn
user_exit_insn:
	ud2

/* void user_return(uint64_t value): called from isr_dispatch at CPL0. */
	.globl	user_return
user_return:
	movq	user_saved_rsp(%rip), %rsp
	movl	$SEL_DATA, %eax		/* iretq to CPL3 nulled DS/ES */
	movl	%eax, %ds
	movl	%eax, %es
	movq	%rdi, %rax
	popfq
	popq	%r15
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%rbx
	popq	%rbp
	ret

	.bss
	.balign	8
user_saved_rsp:
	.skip	8

/* ---------------- GDT and page tables ------------------------------------ */
/*
 * The GDT is in .data: user_init() (hw.c) fills the TSS descriptor at 0x28
 * and ltr marks it busy. 0x18/0x20 are the ring-3 segments used by
 * run_user (selectors 0x1b and 0x23 with RPL 3).
 */
	.data
	.balign	16
	.globl	gdt
gdt:
	.quad	0				/* null */
	.quad	0x00af9a000000ffff		/* 0x08: 64-bit code, DPL0 */
	.quad	0x00cf92000000ffff		/* 0x10: flat data, DPL0 */
	.quad	0x00affa000000ffff		/* 0x18: 64-bit code, DPL3 */
	.quad	0x00cff2000000ffff		/* 0x20: flat data, DPL3 */
	.quad	0, 0				/* 0x28: 64-bit TSS (16 bytes) */
gdt_end:
	.section .rodata
	.balign	8
gdt_ptr:					/* 10 bytes; 32-bit lgdt uses 6 */
	.word	gdt_end - gdt - 1
	.quad	gdt

/*
 * Identity map of the first 4 GiB with 2 MiB pages, built at assembly time so
 * that no code runs before paging. The top GiB (PCI hole: MMIO, IOAPIC,
 * LAPIC) is mapped uncached (PCD|PWT). Every level has the U/S bit, so code
 * run with run_user (ring 3) can use the same addresses, MMIO included.
 */
#define PTE_P    0x001
#define PTE_RW   0x002
#define PTE_US   0x004
#define PTE_PWT  0x008
#define PTE_PCD  0x010
#define PTE_PS   0x080

	.data
	.balign	4096
pml4:
	.quad	pdpt + (PTE_P | PTE_RW | PTE_US)
	.fill	511, 8, 0
pdpt:
	.quad	pd + 0x0000 + (PTE_P | PTE_RW | PTE_US)
	.quad	pd + 0x1000 + (PTE_P | PTE_RW | PTE_US)
	.quad	pd + 0x2000 + (PTE_P | PTE_RW | PTE_US)
	.quad	pd + 0x3000 + (PTE_P | PTE_RW | PTE_US)
	.fill	508, 8, 0
pd:
	.set	i, 0
	.rept	2048
	.if i < 1536
	.quad	(i << 21) | (PTE_P | PTE_RW | PTE_US | PTE_PS)
	.else
	.quad	(i << 21) | (PTE_P | PTE_RW | PTE_US | PTE_PS | PTE_PCD | PTE_PWT)
	.endif
	.set	i, i + 1
	.endr

/* ---------------- stack --------------------------------------------------- */
	.bss
	.balign	16
stack:
	.skip	16384
stack_top:

/* ---------------- PVH ELF note -------------------------------------------- */
/*
 * XEN_ELFNOTE_PHYS32_ENTRY (18). The descriptor is 8 bytes (upper half
 * zero): QEMU reads a 64-bit value from ELF64 notes, Xen accepts 4 or 8.
 */
	.section .note.Xen, "a", @note
	.balign	4
	.long	4			/* namesz */
	.long	8			/* descsz */
	.long	18			/* type: XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz	"Xen"
	.balign	4
	.quad	pvh_start
	.balign	4

	.section .note.GNU-stack, "", @progbits
