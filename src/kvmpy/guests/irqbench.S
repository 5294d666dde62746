/*
 * irqbench.S - interrupt delivery for bench/interrupts.py, in 32-bit protected mode.
 *
 * The phases are marked by an OUT of their number to port 0x80 (the bench timestamps those
 * exits):
 *   1 .. 2  TIMER_N LAPIC timer interrupts back to back: one-shot with an initial count of 1,
 *           re-armed by the handler; the BSP waits in STI; HLT.
 *   3 .. 4  with two CPUs or more (fw_cfg), IPI_N round trips: the BSP sends CPU 1 a fixed
 *           IPI (PING_VEC), whose handler sends one back (PONG_VEC); the BSP waits for each.
 * Then isa-debug-exit with 0.
 */
        .include "boot.inc"
        .include "apic.inc"

        .set TIMER_N,     2000
        .set IPI_N,       500
        .set TIMER_VEC,   0x40
        .set PING_VEC,    0x51
        .set PONG_VEC,    0x52
        .set NVEC,        0x60
        .set PHASE_PORT,  0x80
        .set V_TICKS,     SCRATCH + 0x00
        .set V_PONGS,     SCRATCH + 0x04
        .set V_ALIVE,     SCRATCH + 0x08
        .set idt,         SCRATCH + 0x100
        .set AP_STACK,    0x70000

stage16:
        ret

        AP_TRAMPOLINE ap32

        .code32
stage32:
        movl    $0, V_TICKS
        movl    $0, V_PONGS
        movl    $0, V_ALIVE
        SET_GATE idt, TIMER_VEC, timer_irq
        SET_GATE idt, PING_VEC, ping_irq
        SET_GATE idt, PONG_VEC, pong_irq
        lidt    idt_desc
        movl    $0x1ff, L_SVR
        mov     $0xff, %al
        out     %al, $0x21
        out     %al, $0xa1

        movl    $0xb, L_TDCR            /* divide by 1 */
        movl    $TIMER_VEC, L_LVTT      /* one-shot */
        mov     $1, %al
        out     %al, $PHASE_PORT
        movl    $1, L_TMICT
1:      sti
        hlt
        cli
        cmpl    $TIMER_N, V_TICKS
        jb      1b
        mov     $2, %al
        out     %al, $PHASE_PORT

        FW_CFG_CPUS
        cmp     $2, %eax
        jb      9f
        movl    $ICR_INIT_OTHERS, L_ICR
        movl    $ICR_SIPI_OTHERS | SIPI_VECTOR, L_ICR
        movl    $ICR_SIPI_OTHERS | SIPI_VECTOR, L_ICR
2:      pause
        cmpl    $0, V_ALIVE
        je      2b
        mov     $3, %al
        out     %al, $PHASE_PORT
        xor     %ecx, %ecx
3:      movl    $1 << 24, L_ICR2        /* ping CPU 1 */
        movl    $PING_VEC, L_ICR
        inc     %ecx
4:      sti
        hlt
        cli
        cmp     V_PONGS, %ecx
        ja      4b
        cmp     $IPI_N, %ecx
        jb      3b
        mov     $4, %al
        out     %al, $PHASE_PORT
9:      xor     %al, %al
        out     %al, $DEBUG_EXIT
        cli
        hlt

timer_irq:
        incl    V_TICKS
        cmpl    $TIMER_N, V_TICKS
        jae     1f
        movl    $1, L_TMICT             /* the next one */
1:      movl    $0, L_EOI
        IRQ_RETURN

ping_irq:                               /* on CPU 1: answer the BSP */
        movl    $0, L_ICR2
        movl    $PONG_VEC, L_ICR
        movl    $0, L_EOI
        IRQ_RETURN

pong_irq:
        incl    V_PONGS
        movl    $0, L_EOI
        IRQ_RETURN

ap32:
        mov     $SEL_DATA, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     $AP_STACK, %esp
        lidt    idt_desc
        movl    $0x1ff, L_SVR
        lock incl V_ALIVE
1:      sti
        hlt
        jmp     1b

main64:
        hlt
        jmp     main64

        .p2align 3
idt_desc:  .word NVEC * 8 - 1
           .long idt
