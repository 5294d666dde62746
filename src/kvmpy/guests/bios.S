/*
 * bios.S - the interrupt handlers the VMM's firmware leaves in the BIOS area
 * (kvmpy.vmm.legacy_bios), for real-mode code that runs with interrupts on after the boot,
 * as kvm-unit-tests' realmode does ("sti; hlt", woken by the BIOS timer tick).  Not entered
 * at its first byte: the IVT points into it, at the fixed offsets below.  It references no
 * absolute address, so it runs wherever it is copied.  (Run as a flat image in real mode,
 * it halts at once.)
 *   +0x10  every vector without a device: IRET
 *   +0x20  IRQ 0-7 (vectors 0x08-0x0f): non-specific EOI to the master 8259, IRET
 *   +0x30  IRQ 8-15 (vectors 0x70-0x77): non-specific EOI to the slave, then the master
 */
        .code16
        .globl _start
_start:
        cli
        hlt

        .org 0x10
no_device:
        iret

        .org 0x20
irq_master:
        push %ax
        mov $0x20, %al
        out %al, $0x20
        pop %ax
        iret

        .org 0x30
irq_slave:
        push %ax
        mov $0x20, %al
        out %al, $0xa0
        out %al, $0x20
        pop %ax
        iret
