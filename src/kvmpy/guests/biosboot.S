/*
 * biosboot.S - a multiboot (v1) kernel that goes back to real mode and lives on the BIOS's
 * interrupt set-up (kvmpy.vmm.legacy_bios), as kvm-unit-tests' realmode does.
 *
 * Its multiboot header (the "a.out kludge") loads it where it is linked, at 0x7c00 (the
 * loader's memory map and information structure are at 0x9000), and enters `entry` in flat
 * 32-bit protected mode.  It writes its findings at RESULT (0x6000), then OUTs 0 to
 * isa-debug-exit:
 *   +0  byte   the master 8259's mask (IN 0x21), read in protected mode
 *   +1  byte   the slave's mask (IN 0xa1)
 *   then a 16-bit code segment, CR0.PE cleared, the IVT at 0 (the BIOS's):
 *   "sti; hlt" -- the BIOS's timer tick (IRQ 0) ends the halt, through the IVT's handler,
 *   which sends the EOI; then with IF=0:
 *   +2  byte   the master's ISR (OCW3 0x0b, IN 0x20): 0, the EOI was sent
 *   +3  byte   1: the first halt ended
 *   +4  word   its own handler at vector 0x08 (count, EOI, IRET) replaces the BIOS's, then
 *              "sti; hlt" until it has counted 2 ticks: the timer keeps ticking and IRQ 0
 *              is vector 0x08 -- the count
 *   +6  byte   PIT channel 0's status (read-back command), its OUT bit cleared: 0x36, lobyte/
 *              hibyte access, mode 3, binary
 */
        .include "multiboot.inc"
        .set DEBUG_EXIT,    0xf4
        .set RESULT,        0x6000
        .set STACK,         0x7000
        .set MB_FLAGS,      0x00010000  /* the a.out kludge */
        .set TICKS,         2

        .text
        .code16
        MULTIBOOT_START MB_FLAGS, _start, image_end, entry

        .code32
entry:
        mov     $STACK, %esp
        in      $0x21, %al
        mov     %al, RESULT
        in      $0xa1, %al
        mov     %al, RESULT + 1
        lgdt    gdt_desc
        ljmp    $0x08, $pm16

        .code16
pm16:
        mov     $0x10, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     %cr0, %eax
        and     $~1, %eax
        mov     %eax, %cr0
        ljmp    $0, $real

real:
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     $STACK, %sp
        lidt    ivt_desc
        sti
        hlt                             /* the BIOS's tick ends it */
        cli
        mov     $0x0b, %al              /* OCW3: read the ISR */
        out     %al, $0x20
        in      $0x20, %al
        mov     %al, RESULT + 2
        movb    $1, RESULT + 3

        movw    $0, RESULT + 4
        movw    $tick, 0x08 * 4
        movw    $0, 0x08 * 4 + 2
1:      sti
        hlt
        cli
        cmpw    $TICKS, RESULT + 4
        jb      1b
        mov     $0xe2, %al              /* read-back: latch channel 0's status */
        out     %al, $0x43
        in      $0x40, %al
        and     $0x7f, %al
        mov     %al, RESULT + 6
        mov     $0, %al
        out     %al, $DEBUG_EXIT
2:      hlt
        jmp     2b

tick:
        incw    %cs:RESULT + 4
        push    %ax
        mov     $0x20, %al
        out     %al, $0x20
        pop     %ax
        iret

        .align  8
gdt:
        .quad   0
        .quad   0x00009a000000ffff      /* 0x08: 16-bit code, base 0, limit 64 KiB */
        .quad   0x000092000000ffff      /* 0x10: 16-bit data */
gdt_end:
gdt_desc:
        .word   gdt_end - gdt - 1
        .long   gdt
ivt_desc:
        .word   0x3ff
        .long   0
image_end:
