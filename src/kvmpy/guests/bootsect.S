/*
 * bootsect.S - a boot sector that lets a BIOS boot any of the other guests from a disk.
 *
 * The guests are flat images linked at 0x7c00 and longer than the one sector a BIOS loads
 * there.  A disk made of this sector followed by a guest image (tests/vmm/test_preload.py
 * builds one for QEMU's SeaBIOS) boots the guest as if a VMM had loaded it:
 *   1. read LOAD_SECTORS sectors after this one (int 0x13, AH=2, the boot drive in DL) to
 *      0x1000:0, through the BIOS's disk services and the VMM's disk controller;
 *   2. copy a three-instruction trampoline to 0x600, outside the image's destination;
 *   3. there, with interrupts off (the guests set up no IDT), copy the image to 0x7c00 over
 *      this sector and jump to 0:0x7c00, with CS:IP as the guests expect.
 * A failed read writes "disk read failed" to COM1 and the value 2 to isa-debug-exit.
 */
        .set COM1,         0x3f8        /* the conventions of boot.inc */
        .set DEBUG_EXIT,   0xf4
        .set IMAGE_ADDR,   0x7c00       /* where the guests are linked, and the BIOS loads us */
        .set LOAD_SEGMENT, 0x1000
        .set LOAD_SECTORS, 8            /* 4 KiB: the largest guest image (build.py) */
        .set TRAMPOLINE,   0x600

        .code16
        .globl _start
_start:
        cli
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %ss
        mov     $IMAGE_ADDR, %sp
        sti                             /* the BIOS's disk services need its interrupts */
        mov     $LOAD_SEGMENT, %ax
        mov     %ax, %es
        xor     %bx, %bx
        mov     $(0x0200 | LOAD_SECTORS), %ax   /* AH=2 read, AL=count */
        mov     $0x0002, %cx            /* cylinder 0, sector 2 */
        xor     %dh, %dh                /* head 0; DL is the boot drive */
        int     $0x13
        jc      fail
        cli
        xor     %ax, %ax
        mov     %ax, %es
        mov     $trampoline, %si
        mov     $TRAMPOLINE, %di
        mov     $(trampoline_end - trampoline), %cx
        cld
        rep movsb
        mov     $LOAD_SEGMENT, %ax
        mov     %ax, %ds
        xor     %si, %si
        mov     $IMAGE_ADDR, %di
        mov     $(LOAD_SECTORS * 512), %cx
        ljmp    $0, $TRAMPOLINE

trampoline:
        rep movsb
        mov     %cx, %ds                /* CX is 0 after the copy */
        ljmp    $0, $IMAGE_ADDR
trampoline_end:

fail:
        mov     $msg_fail, %si
1:      lodsb
        test    %al, %al
        jz      2f
        mov     $COM1, %dx
        out     %al, %dx
        jmp     1b
2:      mov     $2, %al
        out     %al, $DEBUG_EXIT
        hlt

msg_fail:
        .asciz  "disk read failed\r\n"

        .org    510
        .word   0xaa55
