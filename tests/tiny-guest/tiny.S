/*
 * Vesper tiny guest: one flat 64 KiB firmware image that boots unchanged on QEMU
 * (`-bios tiny.bin`: no SeaBIOS, the CPU starts at the reset vector 0xfffffff0, and the
 * image is also visible at 0xf0000) and on vesper-hypervisor (loaded into RAM at 0xf0000,
 * real-mode entry f000:fff0). Used by the benchmarks `doorbell_rtt` and `start_time` of
 * vesper-e2e and by the test `tiny_guest_round_trip`.
 *
 * What it does, in order:
 *   1. Reset vector: `out %al, $0xe9` is the very first instruction (the start-time
 *      benchmark watches port 0xe9: QEMU's isa-debugcon, a port device on our VMM),
 *      then a far jump into the image at f000:start16.
 *   2. Real mode -> 32-bit flat protected mode (caches on: CR0.CD/NW cleared).
 *   3. PCI enumeration on bus 0 through 0xcf8/0xcfc, looking for the Vesper device
 *      (ivshmem-doorbell, 1af4:1110). None: exit with EXIT_NO_DEVICE (the start-time
 *      benchmark's guests have no device and end here).
 *   4. BARs: writes the wanted address to BAR0, BAR1 (MSI-X table) and BAR2 (shared
 *      memory, 64-bit) and uses what each reads back: QEMU takes the guest's address, a
 *      VMM with fixed BARs puts its own back. Memory space and bus master on.
 *   5. MSI-X (both VMMs' devices have the capability): table entry 0 = fixed interrupt,
 *      vector VECTOR, to LAPIC 0, unmasked; MSI-X enabled. H_FLAGS bit 0 says it was
 *      found; without it the guest still runs, and only a host that routes that MSI
 *      itself reaches it.
 *   6. Interrupts: 8259 PICs initialised and fully masked (no PIT ticks), LAPIC
 *      software-enabled with LINT0/LINT1 masked, an IDT whose every gate reports an
 *      unexpected vector except VECTOR (the doorbell handler) and the spurious 0xff.
 *   7. The shared memory's header (written by the host before the start) gives the
 *      number of round trips and how to wait. Each round trip: `lfence; rdtsc`, write
 *      the doorbell (host peer 0, vector 0), `sti`, then wait: `hlt` (H_WAIT 0, the
 *      vCPU sleeps in the kernel like an idle guest) or a `pause` spin (H_WAIT 1, the
 *      vCPU keeps running). The interrupt handler's first instructions are `lfence;
 *      rdtsc`, and the TSC difference goes into the shared memory. The
 *      handler then EOIs, bumps a counter and starts the next round trip itself (no
 *      IRET, see `round_trip`). At the end the header says done and the guest exits
 *      with EXIT_DONE.
 *
 * Text for humans goes to port 0xe9 (debug console) on both VMMs; the exit code to port
 * 0x501 (QEMU's isa-debug-exit: process status (code << 1) | 1; our VMM: PowerOff(code)).
 *
 * The image is linked at 0: real-mode labels are offsets in segment 0xf000, and 32-bit
 * code adds BASE (the image's linear address below 1 MiB) to them. Everything the guest
 * writes lives in RAM below 0x8000 or in the device: the image itself is ROM on QEMU.
 */

        .set BASE,          0xf0000         /* linear address of the image below 1 MiB */
        .set DEBUGCON,      0xe9            /* guest text, and the first instruction */
        .set DEBUG_EXIT,    0x501           /* exit code port */
        .set STACK_TOP,     0x7000
        .set IDT_ADDR,      0x1000          /* 256 gates of 8 bytes, in RAM */
        .set COUNTER,       0x0800          /* bumped by the doorbell interrupt handler */
        .set LAST_HI,       0x0804          /* high TSC dword of the latest doorbell */
        .set BARS,          0x0810          /* BAR0, BAR1, BAR2 as read back (3 dwords) */
        .set FLAGS,         0x0820          /* what was set up, copied to H_FLAGS */
        .set WAIT_SPIN,     0x0824          /* H_WAIT: 0 = hlt, else spin */

        .set LAPIC,         0xfee00000
        .set LAPIC_TPR,     0x080
        .set LAPIC_EOI,     0x0b0
        .set LAPIC_SVR,     0x0f0
        .set LAPIC_LINT0,   0x350
        .set LAPIC_LINT1,   0x360
        .set VECTOR,        0x40            /* the doorbell interrupt's IDT vector */

        .set VENDOR_DEVICE, 0x11101af4      /* ivshmem (1af4:1110), as one config dword */
        .set BAR0_WANT,     0xc0100000      /* registers, 256 bytes */
        .set BAR1_WANT,     0xc0101000      /* MSI-X table and PBA, 4 KiB */
        .set BAR2_WANT,     0xc0000000      /* shared memory, up to 1 MiB */
        .set DOORBELL,      12              /* BAR0 register */
        .set RING_HOST,     0x00000000      /* (peer 0 = host) << 16 | vector 0 */

        /* Shared-memory header (offsets in BAR2); the host writes MAGIC and H_ITER. */
        .set MAGIC,         0x42505356      /* "VSPB" */
        .set H_MAGIC,       0
        .set H_ITER,        4               /* round trips asked for */
        .set H_STATUS,      8               /* guest: 1 running, 2 done */
        .set H_DONE,        12              /* guest: round trips completed */
        .set H_TSC_FIRST,   16              /* guest: TSC at the first doorbell (u64) */
        .set H_TSC_LAST,    24              /* guest: TSC at the last doorbell (u64) */
        .set H_FLAGS,       32              /* guest: bit 0 = MSI-X programmed */
        .set H_WAIT,        36              /* host: 0 = wait with hlt, 1 = spin */
        .set H_SAMPLES,     64              /* guest: one u32 TSC delta per round trip */
        .set MAX_ITER,      262000          /* fits a 1 MiB region */

        .set EXIT_DONE,       0x10
        .set EXIT_NO_DEVICE,  0x11
        .set EXIT_BAD_HEADER, 0x12
        .set EXIT_TRAP,       0x13

/* ------------------------------------------------------------------------------------ */
        .text
        .code16
        .globl _start
_start:
start16:
        cli
        cld
        xorw    %ax, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movw    $STACK_TOP, %sp
        lgdtl   %cs:gdt_desc                /* the GDT is in the image (read-only is fine) */
        movl    %cr0, %eax
        andl    $0x9fffffff, %eax           /* CD = NW = 0: caches on */
        orl     $1, %eax                    /* PE */
        movl    %eax, %cr0
        ljmpl   $0x08, $(BASE + pm32)

        .balign 8
gdt:
        .quad   0
        .quad   0x00cf9b000000ffff          /* 0x08: code, base 0, 4 GiB, 32-bit, accessed */
        .quad   0x00cf93000000ffff          /* 0x10: data, base 0, 4 GiB, accessed */
gdt_desc:
        .word   gdt_desc - gdt - 1
        .long   BASE + gdt
idt_desc:
        .word   256 * 8 - 1
        .long   IDT_ADDR

/* ------------------------------------------------------------------------------------ */
        .code32
pm32:
        movw    $0x10, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %fs
        movw    %ax, %gs
        movw    %ax, %ss
        movl    $STACK_TOP, %esp
        movl    $0, FLAGS
        movl    $(BASE + msg_hello), %esi
        call    puts

        /* 3. Find the device: bus 0, devices 0-31, function 0. */
        xorl    %ebx, %ebx
find:
        movl    %ebx, %ebp
        shll    $11, %ebp
        orl     $0x80000000, %ebp           /* config address of 00:ebx.0 */
        movl    %ebp, %eax
        call    cfg_read
        cmpl    $VENDOR_DEVICE, %eax
        je      found
        incl    %ebx
        cmpl    $32, %ebx
        jb      find
        movl    $(BASE + msg_no_device), %esi
        call    puts
        movb    $EXIT_NO_DEVICE, %al
        jmp     exit

found:
        /* 4. BARs: write the wanted address, keep what reads back. */
        leal    0x10(%ebp), %eax
        movl    $BAR0_WANT, %ecx
        call    cfg_write
        leal    0x10(%ebp), %eax
        call    cfg_read
        andl    $0xfffffff0, %eax
        movl    %eax, BARS
        leal    0x14(%ebp), %eax
        movl    $BAR1_WANT, %ecx
        call    cfg_write
        leal    0x14(%ebp), %eax
        call    cfg_read
        andl    $0xfffffff0, %eax
        movl    %eax, BARS + 4
        leal    0x18(%ebp), %eax            /* BAR2 is 64-bit: low dword, then high */
        movl    $BAR2_WANT, %ecx
        call    cfg_write
        leal    0x1c(%ebp), %eax
        xorl    %ecx, %ecx
        call    cfg_write
        leal    0x18(%ebp), %eax
        call    cfg_read
        andl    $0xfffffff0, %eax
        movl    %eax, BARS + 8
        leal    0x04(%ebp), %eax            /* command: memory space (1), bus master (2) */
        call    cfg_read
        movl    %eax, %ecx
        andl    $0xffff, %ecx               /* do not write status bits back */
        orl     $0x6, %ecx
        leal    0x04(%ebp), %eax
        call    cfg_write

        /* 5. MSI-X, if the capability list has it (id 0x11). */
        leal    0x04(%ebp), %eax
        call    cfg_read
        testl   $(1 << 20), %eax            /* status: capabilities list */
        jz      no_msix
        leal    0x34(%ebp), %eax
        call    cfg_read
        movl    %eax, %ebx
        movl    $48, %edi                   /* bound the walk */
cap_walk:
        andl    $0xfc, %ebx
        jz      no_msix
        decl    %edi
        jz      no_msix
        leal    (%ebp, %ebx), %eax
        call    cfg_read
        cmpb    $0x11, %al
        je      msix
        movzbl  %ah, %ebx                   /* next pointer */
        jmp     cap_walk
msix:
        leal    4(%ebp, %ebx), %eax         /* table offset and BIR */
        call    cfg_read
        movl    %eax, %ecx
        andl    $7, %ecx                    /* BIR: 0-2 are the BARs read back above */
        cmpl    $2, %ecx
        ja      no_msix
        andl    $0xfffffff8, %eax
        addl    BARS(, %ecx, 4), %eax       /* table entry 0 */
        movl    $LAPIC, 0(%eax)             /* message address: LAPIC 0, physical */
        movl    $0, 4(%eax)
        movl    $VECTOR, 8(%eax)            /* message data: fixed, edge, VECTOR */
        movl    $0, 12(%eax)                /* vector control: unmasked */
        leal    (%ebp, %ebx), %eax
        call    cfg_read
        movl    %eax, %ecx
        andl    $0xbfffffff, %ecx           /* message control: function mask off */
        orl     $0x80000000, %ecx           /* MSI-X enable */
        leal    (%ebp, %ebx), %eax
        call    cfg_write
        orl     $1, FLAGS
        movl    $(BASE + msg_msix), %esi
        call    puts
        jmp     interrupts
no_msix:
        movl    $(BASE + msg_no_msix), %esi
        call    puts

interrupts:
        /* 6a. Both 8259s: vectors 0x20/0x28, then every line masked. */
        movb    $0x11, %al
        outb    %al, $0x20
        outb    %al, $0xa0
        movb    $0x20, %al
        outb    %al, $0x21
        movb    $0x28, %al
        outb    %al, $0xa1
        movb    $0x04, %al
        outb    %al, $0x21
        movb    $0x02, %al
        outb    %al, $0xa1
        movb    $0x01, %al
        outb    %al, $0x21
        outb    %al, $0xa1
        movb    $0xff, %al
        outb    %al, $0x21
        outb    %al, $0xa1

        /* 6b. IDT: gate i -> stubs + 16 * i (unexpected), then VECTOR -> doorbell_irq. */
        movl    $IDT_ADDR, %edi
        movl    $(BASE + stubs), %eax
        movl    $256, %ecx
fill_idt:
        call    set_gate
        addl    $16, %eax
        addl    $8, %edi
        loop    fill_idt
        movl    $(IDT_ADDR + VECTOR * 8), %edi
        movl    $(BASE + doorbell_irq), %eax
        call    set_gate
        lidt    BASE + idt_desc

        /* 6c. LAPIC: software enable (spurious vector 0xff), LINT0/1 masked, TPR 0. */
        movl    $0x1ff, LAPIC + LAPIC_SVR
        movl    $0x10000, LAPIC + LAPIC_LINT0
        movl    $0x10000, LAPIC + LAPIC_LINT1
        movl    $0, LAPIC + LAPIC_TPR

        /* 7. The header from the host. */
        movl    BARS + 8, %esi
        cmpl    $MAGIC, H_MAGIC(%esi)
        jne     bad_header
        movl    H_ITER(%esi), %ecx
        testl   %ecx, %ecx
        jz      bad_header
        cmpl    $MAX_ITER, %ecx
        ja      bad_header
        movl    FLAGS, %eax
        movl    %eax, H_FLAGS(%esi)
        movl    H_WAIT(%esi), %eax
        movl    %eax, WAIT_SPIN
        movl    $0, H_DONE(%esi)
        movl    $1, H_STATUS(%esi)
        movl    $(BASE + msg_ready), %esi
        call    puts
        movl    BARS + 8, %esi
        leal    H_SAMPLES(%esi), %edi
        movl    $0, COUNTER
        lfence
        rdtsc
        movl    %eax, H_TSC_FIRST(%esi)
        movl    %edx, H_TSC_FIRST + 4(%esi)

        /*
         * One round trip per pass. Interrupts are off except while waiting, and the
         * handler does not return with IRET: it drops its frame and goes on with the
         * next pass (IRET is privileged, and kvm_pvm's emulator cannot do a
         * protected-mode IRET). Registers across a pass: %ecx passes left, %edi next
         * sample, %esi BAR2, %ebp TSC (low dword) at the doorbell write.
         */
round_trip:
        lfence
        rdtsc
        movl    %eax, %ebp                  /* start (low dword) */
        movl    %edx, LAST_HI
        movl    BARS, %eax
        movl    $RING_HOST, DOORBELL(%eax)  /* ring the host */
        sti                                 /* an answer already pending comes now */
        cmpl    $0, WAIT_SPIN
        jne     wait_spin
wait_hlt:
        hlt                                 /* the answer may come before: no matter, */
        jmp     wait_hlt                    /* the handler never returns here */
wait_spin:
        pause
        jmp     wait_spin

/* The doorbell interrupt (an interrupt gate: IF is off again here). */
doorbell_irq:
        lfence
        rdtsc
        subl    %ebp, %eax                  /* round trip in TSC ticks */
        movl    %eax, (%edi)
        addl    $4, %edi
        addl    $12, %esp                   /* drop eip, cs, eflags: not returning */
        movl    $0, LAPIC + LAPIC_EOI
        incl    COUNTER
        incl    H_DONE(%esi)
        decl    %ecx
        jnz     round_trip

        movl    %ebp, H_TSC_LAST(%esi)
        movl    LAST_HI, %eax
        movl    %eax, H_TSC_LAST + 4(%esi)
        movl    $2, H_STATUS(%esi)
        movl    $(BASE + msg_done), %esi
        call    puts
        movb    $EXIT_DONE, %al
        jmp     exit

bad_header:
        movl    $(BASE + msg_bad_header), %esi
        call    puts
        movb    $EXIT_BAD_HEADER, %al
        /* fall through */

/* Exit code in %al; never returns. */
exit:
        movw    $DEBUG_EXIT, %dx
        outb    %al, %dx
1:      cli
        hlt
        jmp     1b

/* 256 stubs of 16 bytes: push the vector, go to `unexpected`. */
        .balign 16
stubs:
        .set    vec, 0
        .rept   256
        pushl   $vec
        jmp     unexpected
        .balign 16
        .set    vec, vec + 1
        .endr

unexpected:
        cmpl    $0xff, (%esp)               /* spurious LAPIC interrupt: no EOI, go on */
        jne     1f
        addl    $4, %esp
        iret
1:      movl    $(BASE + msg_trap), %esi
        call    puts
        popl    %eax
        call    put_hex
        movl    $(BASE + msg_at), %esi
        call    puts
        movl    (%esp), %eax                /* eip, or the error code for 8, 10-14, 17 */
        call    put_hex
        movl    $(BASE + msg_nl), %esi
        call    puts
        movb    $EXIT_TRAP, %al
        jmp     exit

/* Interrupt gate (present, DPL 0, 32-bit) to %eax at (%edi). Keeps %eax. */
set_gate:
        movl    %eax, %edx
        andl    $0xffff, %edx
        orl     $(0x08 << 16), %edx         /* selector: code */
        movl    %edx, (%edi)
        movl    %eax, %edx
        andl    $0xffff0000, %edx
        orl     $0x8e00, %edx
        movl    %edx, 4(%edi)
        ret

/* PCI config dword at address %eax -> %eax. */
cfg_read:
        pushl   %edx
        movw    $0xcf8, %dx
        outl    %eax, %dx
        movw    $0xcfc, %dx
        inl     %dx, %eax
        popl    %edx
        ret

/* PCI config dword %ecx -> address %eax. */
cfg_write:
        pushl   %edx
        movw    $0xcf8, %dx
        outl    %eax, %dx
        movl    %ecx, %eax
        movw    $0xcfc, %dx
        outl    %eax, %dx
        popl    %edx
        ret

/* NUL-terminated string at %esi -> debug console. */
puts:
        pushl   %eax
1:      lodsb
        testb   %al, %al
        jz      2f
        outb    %al, $DEBUGCON
        jmp     1b
2:      popl    %eax
        ret

/* %eax as 8 hex digits -> debug console. */
put_hex:
        pushl   %ecx
        pushl   %edx
        movl    %eax, %edx
        movl    $8, %ecx
1:      roll    $4, %edx
        movl    %edx, %eax
        andl    $0xf, %eax
        movb    BASE + hex_digits(%eax), %al
        outb    %al, $DEBUGCON
        loop    1b
        popl    %edx
        popl    %ecx
        ret

hex_digits:     .ascii  "0123456789abcdef"
msg_hello:      .asciz  "tiny: protected mode\n"
msg_no_device:  .asciz  "tiny: no Vesper device on bus 0\n"
msg_msix:       .asciz  "tiny: MSI-X vector 0 -> LAPIC vector 0x40\n"
msg_no_msix:    .asciz  "tiny: no MSI-X capability\n"
msg_ready:      .asciz  "tiny: round trips\n"
msg_done:       .asciz  "tiny: done\n"
msg_bad_header: .asciz  "tiny: bad shared-memory header\n"
msg_trap:       .asciz  "tiny: unexpected vector 0x"
msg_at:         .asciz  " at 0x"
msg_nl:         .asciz  "\n"

/* ------------------------------------------------------------------------------------ */
/* The reset vector: 16 bytes from the end of the image (0xfffffff0 on QEMU, f000:fff0). */
        .code16
        .org    0xfff0
reset:
        outb    %al, $DEBUGCON              /* the first instruction: a port write */
        ljmp    $0xf000, $start16
        .org    0x10000
