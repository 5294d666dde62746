/*
 * virtio.S - a PVH kernel (pvh.inc) with a virtio-mmio driver of its own, for kvmpy's
 * virtio devices (src/kvmpy/vmm/devices/virtio).
 *
 * It finds the devices as Linux does on Firecracker: in its command line, each
 * "virtio_mmio.device=<size>@0x<base>:<irq>".  It loads its own GDT and IDT, masks the
 * 8259s, enables its LAPIC and routes each device's IRQ through the IOAPIC (level-
 * triggered, active high, vector 0x30 + irq) to one handler, which acknowledges every
 * device's InterruptStatus and counts the interrupts.  For each device it prints
 *
 *   virtio-mmio <base> irq <irq> magic <MagicValue> version <Version> id <DeviceID>
 *
 * (numbers in hex) and, for a block device (id 2), an entropy device (id 4) or a console
 * (id 3), initialises it as the spec's driver does (reset, ACKNOWLEDGE, DRIVER, VIRTIO_F_VERSION_1 only,
 * FEATURES_OK read back, one queue of 8 entries, DRIVER_OK) and then:
 *
 *   blk:  " blk capacity <sectors> read <status> sector0 <sector 0 as a string> write <status>"
 *         (sector 0 read, then sector 1 written with the line "written by the virtio guest")
 *   rng:  " rng used <bytes> bytes <16 bytes in hex>"
 *   console: " console: ", then "hello through virtio-console\n" sent through transmitq0
 *         (queue 1), to the VMM's console output rather than COM1
 *
 * Each request waits, with sti; hlt, for the interrupt, then checks the used ring.  Last,
 * "interrupts <count>\n", and isa-debug-exit 0.
 */
        .include "pvh.inc"
        .include "apic.inc"
        .set SEL_CODE32,  0x08
        .set SEL_DATA,    0x10
        .set IOAPIC_SEL,  0xfec00000
        .set IOAPIC_WIN,  0xfec00010
        .set VECTOR_BASE, 0x30
        .set VIRTIO_MAGIC, 0x74726976
        /* virtio-mmio registers */
        .set R_MAGIC, 0x000
        .set R_VERSION, 0x004
        .set R_DEVICE_ID, 0x008
        .set R_DEV_FEATURES, 0x010
        .set R_DEV_FEATURES_SEL, 0x014
        .set R_DRV_FEATURES, 0x020
        .set R_DRV_FEATURES_SEL, 0x024
        .set R_QUEUE_SEL, 0x030
        .set R_QUEUE_NUM_MAX, 0x034
        .set R_QUEUE_NUM, 0x038
        .set R_QUEUE_READY, 0x044
        .set R_QUEUE_NOTIFY, 0x050
        .set R_INT_STATUS, 0x060
        .set R_INT_ACK, 0x064
        .set R_STATUS, 0x070
        .set R_QUEUE_DESC, 0x080
        .set R_QUEUE_DRIVER, 0x090
        .set R_QUEUE_DEVICE, 0x0a0
        .set R_CONFIG, 0x100
        .set QSIZE, 8
        .set F_NEXT, 1
        .set F_WRITE, 2
        /* a queue: descriptors at +0, the available ring at +0x100, the used ring at +0x200 */
        .set AVAIL_IDX, 0x102
        .set AVAIL_RING, 0x104
        .set USED_IDX, 0x202
        .set USED_RING, 0x204
        /* guest memory */
        .set QUEUES,      0x200000      /* device i's queue at QUEUES + 0x1000 * i */
        .set REQ_HEADER,  0x210000
        .set REQ_STATUS,  0x210100
        .set SECTOR_BUF,  0x211000
        .set WRITE_BUF,   0x212000
        .set RNG_BUF,     0x213000
        .set NDEVICES,    0x21f000
        .set INTERRUPTS,  0x21f004
        .set DEVICES,     0x220000      /* (base, irq) of each device announced */
        .set IDT,         0x230000

/* Print the string at label msg (clobbers ESI, DX). */
.macro  PRINT msg
        mov     $(\msg - _start + LOAD), %esi
        call    puts
.endm

/* Print the string at label msg, then src (EAX if not given) in hex (clobbers ESI, DX;
   EAX = src). */
.macro  SHOW msg, src=%eax
        mov     \src, %eax
        push    %eax
        PRINT   \msg
        pop     %eax
        call    puthex
.endm

/* Descriptor i of the queue at EDI: addr, len, flags, next. */
.macro  DESC i, addr, len, flags, next
        movl    $\addr, 16 * \i(%edi)
        movl    $0, 16 * \i + 4(%edi)
        movl    $\len, 16 * \i + 8(%edi)
        movw    $\flags, 16 * \i + 12(%edi)
        movw    $\next, 16 * \i + 14(%edi)
.endm

        .code32
        DEFINE_PVH_IO

pvh_entry:
        lgdt    (gdt_desc - _start + LOAD)
        ljmp    $SEL_CODE32, $(1f - _start + LOAD)
1:      mov     $SEL_DATA, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     $STACK_TOP, %esp
        lidt    (idt_desc - _start + LOAD)
        mov     $0xff, %al              /* the 8259s masked: interrupts come by the IOAPIC */
        out     %al, $0x21
        out     %al, $0xa1
        movl    $0x1ff, L_SVR           /* the LAPIC enabled, spurious vector 0xff */
        movl    $0, INTERRUPTS
        mov     SI_CMDLINE(%ebx), %esi
        call    parse_cmdline
        xor     %ebx, %ebx
2:      cmp     NDEVICES, %ebx
        jae     3f
        push    %ebx
        call    probe
        pop     %ebx
        inc     %ebx
        jmp     2b
3:      SHOW    msg_interrupts, INTERRUPTS
        mov     $'\n', %al
        call    putc
        xor     %al, %al
        jmp     exit

/* DEVICES[], NDEVICES from each "virtio_mmio.device=<size>@0x<hex base>:<decimal irq>" in
   the command line at ESI. */
parse_cmdline:
        movl    $0, NDEVICES
4:      cmpb    $0, (%esi)
        je      9f
        mov     $(key - _start + LOAD), %edi
        mov     %esi, %edx
5:      mov     (%edi), %al
        test    %al, %al
        jz      6f                      /* the whole key matched at ESI */
        cmp     (%edx), %al
        jne     8f
        inc     %edi
        inc     %edx
        jmp     5b
8:      inc     %esi
        jmp     4b
6:      mov     %edx, %esi
7:      lodsb                           /* the size, up to '@' */
        test    %al, %al
        jz      9f
        cmp     $'@', %al
        jne     7b
        add     $2, %esi                /* "0x" */
        mov     $16, %ecx
        call    parse_number
        push    %eax
        inc     %esi                    /* ':' */
        mov     $10, %ecx
        call    parse_number
        mov     NDEVICES, %ecx
        pop     %edx
        mov     %edx, DEVICES(,%ecx,8)
        mov     %eax, DEVICES + 4(,%ecx,8)
        incl    NDEVICES
        jmp     4b
9:      ret

/* EAX = the number in base ECX (10 or 16, lower-case digits) at ESI; ESI past it. */
parse_number:
        xor     %eax, %eax
10:     movzbl  (%esi), %edx
        sub     $'0', %edx
        cmp     $10, %edx
        jb      11f
        sub     $('a' - '0' - 10), %edx
        cmp     $10, %edx
        jb      12f
11:     cmp     %ecx, %edx
        jae     12f
        imul    %ecx, %eax
        add     %edx, %eax
        inc     %esi
        jmp     10b
12:     ret

/* Device EBX of DEVICES: print what it is, route its IRQ, drive it if it is one we know. */
probe:
        mov     DEVICES(,%ebx,8), %ebp
        SHOW    msg_device, %ebp
        mov     DEVICES + 4(,%ebx,8), %eax
        SHOW    msg_irq
        call    route_irq
        SHOW    msg_magic, R_MAGIC(%ebp)
        SHOW    msg_version, R_VERSION(%ebp)
        SHOW    msg_id, R_DEVICE_ID(%ebp)
        cmpl    $VIRTIO_MAGIC, R_MAGIC(%ebp)
        jne     13f
        mov     %ebx, %edi
        shl     $12, %edi
        add     $QUEUES, %edi
        cmpl    $2, R_DEVICE_ID(%ebp)
        je      blk
        cmpl    $4, R_DEVICE_ID(%ebp)
        je      rng
        cmpl    $3, R_DEVICE_ID(%ebp)
        je      console
13:     jmp     newline

/* IRQ EAX -> vector 0x30 + EAX: the IDT gate, then the IOAPIC's redirection entry (level,
   active high, fixed, to APIC ID 0, unmasked). */
route_irq:
        lea     VECTOR_BASE(%eax), %ecx
        lea     IDT(,%ecx,8), %edx
        mov     $(irq_handler - _start + LOAD), %esi
        mov     %si, (%edx)
        movw    $SEL_CODE32, 2(%edx)
        movw    $0x8e00, 4(%edx)        /* present, 32-bit interrupt gate */
        shr     $16, %esi
        mov     %si, 6(%edx)
        lea     0x10(,%eax,2), %edx
        mov     %edx, IOAPIC_SEL
        or      $0xa000, %ecx           /* level-triggered (bit 15), active high */
        and     $~0x2000, %ecx
        mov     %ecx, IOAPIC_WIN
        inc     %edx
        mov     %edx, IOAPIC_SEL
        movl    $0, IOAPIC_WIN
        ret

/* The driver's side of initialisation (virtio 1.2, 3.1.1): queue ECX at EDI, the only one
   set up; CF on failure. */
virtio_init:
        movl    $0, R_STATUS(%ebp)      /* reset */
        movl    $1, R_STATUS(%ebp)      /* ACKNOWLEDGE */
        movl    $3, R_STATUS(%ebp)      /* DRIVER */
        movl    $1, R_DEV_FEATURES_SEL(%ebp)
        testl   $1, R_DEV_FEATURES(%ebp)        /* VIRTIO_F_VERSION_1: feature bit 32 */
        jz      14f
        movl    $0, R_DRV_FEATURES_SEL(%ebp)
        movl    $0, R_DRV_FEATURES(%ebp)
        movl    $1, R_DRV_FEATURES_SEL(%ebp)
        movl    $1, R_DRV_FEATURES(%ebp)
        movl    $0xb, R_STATUS(%ebp)    /* FEATURES_OK */
        testl   $8, R_STATUS(%ebp)
        jz      14f
        mov     %ecx, R_QUEUE_SEL(%ebp)
        cmpl    $QSIZE, R_QUEUE_NUM_MAX(%ebp)
        jb      14f
        movl    $QSIZE, R_QUEUE_NUM(%ebp)
        mov     %edi, R_QUEUE_DESC(%ebp)
        movl    $0, R_QUEUE_DESC + 4(%ebp)
        lea     0x100(%edi), %eax
        mov     %eax, R_QUEUE_DRIVER(%ebp)
        movl    $0, R_QUEUE_DRIVER + 4(%ebp)
        lea     0x200(%edi), %eax
        mov     %eax, R_QUEUE_DEVICE(%ebp)
        movl    $0, R_QUEUE_DEVICE + 4(%ebp)
        movl    $1, R_QUEUE_READY(%ebp)
        movl    $0xf, R_STATUS(%ebp)    /* DRIVER_OK */
        clc
        ret
14:     PRINT   msg_init_failed
        stc
        ret

/* Make the chain at descriptor 0 available, notify queue ECX, wait for the interrupt, and
   check that the used ring has it. */
submit:
        mov     %ecx, %esi
        movzwl  AVAIL_IDX(%edi), %eax
        mov     %eax, %ecx
        and     $(QSIZE - 1), %ecx
        movw    $0, AVAIL_RING(%edi,%ecx,2)
        inc     %eax
        mov     %ax, AVAIL_IDX(%edi)
        mov     INTERRUPTS, %edx
        mov     %esi, R_QUEUE_NOTIFY(%ebp)
15:     cli
        cmp     INTERRUPTS, %edx
        jne     16f
        sti
        hlt
        jmp     15b
16:     cmp     USED_IDX(%edi), %ax
        je      17f
        PRINT   msg_not_used
17:     ret

blk:
        xor     %ecx, %ecx
        call    virtio_init
        jc      newline
        SHOW    msg_capacity, R_CONFIG(%ebp)    /* capacity (low half) */
        movl    $0, REQ_HEADER          /* VIRTIO_BLK_T_IN */
        movl    $0, REQ_HEADER + 4
        movl    $0, REQ_HEADER + 8      /* sector 0 */
        movl    $0, REQ_HEADER + 12
        DESC    0, REQ_HEADER, 16, F_NEXT, 1
        DESC    1, SECTOR_BUF, 512, F_WRITE | F_NEXT, 2
        DESC    2, REQ_STATUS, 1, F_WRITE, 0
        movb    $0xff, REQ_STATUS
        xor     %ecx, %ecx
        call    submit
        movzbl  REQ_STATUS, %eax
        SHOW    msg_read
        PRINT   msg_sector0
        mov     $SECTOR_BUF, %esi
        call    puts
        mov     $(disk_text - _start + LOAD), %esi
        mov     $WRITE_BUF, %edi
        mov     $(disk_text_end - disk_text), %ecx
        rep movsb
        mov     %ebx, %edi              /* the queue again */
        shl     $12, %edi
        add     $QUEUES, %edi
        movl    $1, REQ_HEADER          /* VIRTIO_BLK_T_OUT */
        movl    $1, REQ_HEADER + 8      /* sector 1 */
        DESC    1, WRITE_BUF, 512, F_NEXT, 2
        movb    $0xff, REQ_STATUS
        xor     %ecx, %ecx
        call    submit
        movzbl  REQ_STATUS, %eax
        SHOW    msg_write
        jmp     newline

rng:
        xor     %ecx, %ecx
        call    virtio_init
        jc      newline
        DESC    0, RNG_BUF, 16, F_WRITE, 0
        xor     %ecx, %ecx
        call    submit
        SHOW    msg_rng, USED_RING+4(%edi)           /* used[0].len */
        PRINT   msg_bytes
        mov     $RNG_BUF, %esi
18:     lodsb
        push    %esi
        call    putbyte
        pop     %esi
        cmp     $(RNG_BUF + 16), %esi
        jb      18b
newline:
        mov     $'\n', %al
        jmp     putc

console:
        mov     $1, %ecx                /* transmitq0 */
        call    virtio_init
        jc      newline
        PRINT   msg_console
        DESC    0, CONSOLE_TEXT, CONSOLE_TEXT_LEN, 0, 0
        mov     $1, %ecx
        jmp     submit                  /* the line's end comes through the console */

/* AL as two hex digits. */
putbyte:
        push    %eax
        shr     $4, %al
        call    nibble
        pop     %eax
nibble:
        and     $0xf, %eax
        mov     (hexdigits - _start + LOAD)(%eax), %al
        jmp     putc

/* Every device's interrupts acknowledged and counted; EOI. */
irq_handler:
        push    %eax
        push    %ecx
        push    %edx
        xor     %ecx, %ecx
19:     cmp     NDEVICES, %ecx
        jae     21f
        mov     DEVICES(,%ecx,8), %edx
        mov     R_INT_STATUS(%edx), %eax
        test    %eax, %eax
        jz      20f
        mov     %eax, R_INT_ACK(%edx)
        incl    INTERRUPTS
20:     inc     %ecx
        jmp     19b
21:     movl    $0, L_EOI
        pop     %edx
        pop     %ecx
        pop     %eax
        IRQ_RETURN

        .balign 8
gdt:    .quad   0, 0x00cf9a000000ffff, 0x00cf92000000ffff
gdt_desc:
        .word   3 * 8 - 1
        .long   gdt - _start + LOAD
idt_desc:
        .word   256 * 8 - 1
        .long   IDT

key:            .asciz "virtio_mmio.device="
msg_device:     .asciz "virtio-mmio "
msg_irq:        .asciz " irq "
msg_magic:      .asciz " magic "
msg_version:    .asciz " version "
msg_id:         .asciz " id "
msg_init_failed: .asciz " init failed"
msg_not_used:   .asciz " (interrupt without a used buffer)"
msg_capacity:   .asciz " blk capacity "
msg_read:       .asciz " read "
msg_sector0:    .asciz " sector0 "
msg_write:      .asciz " write "
msg_rng:        .asciz " rng used "
msg_bytes:      .asciz " bytes "
msg_interrupts: .asciz "interrupts "
disk_text:      .ascii "written by the virtio guest\n"
disk_text_end:
msg_console:    .asciz " console: "
console_text:   .ascii "hello through virtio-console\n"
console_text_end:
        .set CONSOLE_TEXT, console_text - _start + LOAD
        .set CONSOLE_TEXT_LEN, console_text_end - console_text
image_end:
