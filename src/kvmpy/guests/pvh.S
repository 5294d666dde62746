/*
 * pvh.S - a tiny "vmlinux" for kvmpy's PVH loader: an ELF64 executable (pvh.inc) carrying
 * the Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY.
 *
 * The ELF entry point prints "wrong entry" and exits with 1: a PVH loader enters at the
 * note's address instead, in 32-bit protected mode with EBX pointing at struct
 * hvm_start_info.  That entry prints to COM1 what the start info says:
 *
 *   pvh magic=<hex> version=<hex> flags=<hex> cmdline=<command line> modules=<hex>
 *   [module0=<the module's bytes>] memmap=<hex> last=<hex size>:<hex type> rsdp=<8 bytes
 *   at rsdp_paddr> cr4=<hex>
 *
 * on one line, then ends the run through isa-debug-exit with 0.
 */
        .include "pvh.inc"

        .macro  show msg, field         /* the string msg, then start info field in hex */
        mov     $(\msg - _start + LOAD), %esi
        call    puts
        mov     \field(%ebp), %eax
        call    puthex
        .endm

        .code32
        DEFINE_PVH_IO
pvh_entry:
        mov     $STACK_TOP, %esp
        mov     %ebx, %ebp              /* struct hvm_start_info */
        show    msg_magic, 0
        show    msg_version, SI_VERSION
        show    msg_flags, SI_FLAGS
        mov     $(msg_cmdline - _start + LOAD), %esi
        call    puts
        mov     SI_CMDLINE(%ebp), %esi
        call    puts
        show    msg_modules, SI_NR_MODULES
        cmpl    $0, SI_NR_MODULES(%ebp)
        je      1f
        mov     $(msg_module0 - _start + LOAD), %esi
        call    puts
        mov     SI_MODLIST(%ebp), %ebx
        mov     (%ebx), %esi            /* paddr */
        mov     8(%ebx), %ecx           /* size */
        mov     $COM1, %dx
        rep outsb
1:      show    msg_memmap, SI_MEMMAP_ENTRIES
        mov     $(msg_last - _start + LOAD), %esi
        call    puts
        mov     SI_MEMMAP_ENTRIES(%ebp), %eax
        dec     %eax
        imul    $MEMMAP_ENTRY_SIZE, %eax, %ebx
        add     SI_MEMMAP(%ebp), %ebx
        mov     8(%ebx), %eax           /* size (low half) */
        call    puthex
        mov     $':', %al
        call    putc
        mov     16(%ebx), %eax          /* type */
        call    puthex
        mov     $(msg_rsdp - _start + LOAD), %esi
        call    puts
        mov     SI_RSDP(%ebp), %esi
        mov     $8, %ecx
        mov     $COM1, %dx
        rep outsb
        mov     $(msg_cr4 - _start + LOAD), %esi
        call    puts
        mov     %cr4, %eax
        call    puthex
        mov     $'\n', %al
        call    putc
        xor     %al, %al
        jmp     exit

msg_magic:   .asciz "pvh magic="
msg_version: .asciz " version="
msg_flags:   .asciz " flags="
msg_cmdline: .asciz " cmdline="
msg_modules: .asciz " modules="
msg_module0: .asciz " module0="
msg_memmap:  .asciz " memmap="
msg_last:    .asciz " last="
msg_rsdp:    .asciz " rsdp="
msg_cr4:     .asciz " cr4="
image_end:
