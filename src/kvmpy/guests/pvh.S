/*
 * pvh.S - a tiny "vmlinux" for kvmpy's PVH loader: an ELF64 executable, made by hand here
 * (the guest build links flat images), carrying the Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY.
 *
 * The file is its own single PT_LOAD segment, loaded at physical 1 MiB (its virtual address
 * is a kernel-like one, which a loader must not use), and a PT_NOTE segment holds two Xen
 * notes: GUEST_OS (type 6), then PHYS32_ENTRY (type 18, an 8-byte address, as a 64-bit
 * vmlinux writes it).  The ELF entry point prints "wrong entry" and exits with 1: a PVH
 * loader enters at the note's address instead, in 32-bit protected mode with EBX pointing at
 * struct hvm_start_info.  That entry prints to COM1 what the start info says:
 *
 *   pvh magic=<hex> version=<hex> flags=<hex> cmdline=<command line> modules=<hex>
 *   [module0=<the module's bytes>] memmap=<hex> last=<hex size>:<hex type> rsdp=<8 bytes
 *   at rsdp_paddr> cr4=<hex>
 *
 * on one line, then ends the run through isa-debug-exit with 0.  Addresses in the code are
 * label - _start + LOAD (the image is linked at 0x7c00 like every guest but runs at 1 MiB).
 */
        .set LOAD,        0x100000
        .set VIRT,        0xffffffff80000000
        .set COM1,        0x3f8
        .set DEBUG_EXIT,  0xf4
        .set STACK_TOP,   0x90000
        .set SI_VERSION, 4
        .set SI_FLAGS, 8
        .set SI_NR_MODULES, 12
        .set SI_MODLIST, 16
        .set SI_CMDLINE, 24
        .set SI_RSDP, 32
        .set SI_MEMMAP, 40
        .set SI_MEMMAP_ENTRIES, 48
        .set MEMMAP_ENTRY_SIZE, 24

        .macro  show msg, field         /* the string msg, then start info field in hex */
        mov     $(\msg - _start + LOAD), %esi
        call    puts
        mov     \field(%ebp), %eax
        call    puthex
        .endm

        .text
        .globl  _start
_start:                                 /* Elf64_Ehdr */
        .byte   0x7f, 'E', 'L', 'F', 2, 1, 1, 0     /* ELFCLASS64, little-endian, v1 */
        .quad   0
        .word   2                       /* e_type: ET_EXEC */
        .word   62                      /* e_machine: EM_X86_64 */
        .long   1                       /* e_version */
        .quad   native_entry - _start + LOAD        /* e_entry */
        .quad   phdrs - _start          /* e_phoff */
        .quad   0                       /* e_shoff: no sections */
        .long   0                       /* e_flags */
        .word   64, 56, 2               /* e_ehsize, e_phentsize, e_phnum */
        .word   64, 0, 0                /* e_shentsize, e_shnum, e_shstrndx */
phdrs:                                  /* Elf64_Phdr: PT_LOAD, the whole file */
        .long   1, 7                    /* p_type, p_flags: RWX */
        .quad   0                       /* p_offset */
        .quad   VIRT + LOAD             /* p_vaddr */
        .quad   LOAD                    /* p_paddr */
        .quad   image_end - _start      /* p_filesz */
        .quad   image_end - _start      /* p_memsz */
        .quad   0x1000                  /* p_align */
        .long   4, 4                    /* PT_NOTE, PF_R */
        .quad   notes - _start
        .quad   VIRT + LOAD + notes - _start
        .quad   LOAD + notes - _start
        .quad   notes_end - notes
        .quad   notes_end - notes
        .quad   4

notes:
        .long   4, 6, 6                 /* namesz, descsz, XEN_ELFNOTE_GUEST_OS */
        .asciz  "Xen"
        .asciz  "kvmpy"
        .balign 4
        .long   4, 8, 18                /* namesz, descsz, XEN_ELFNOTE_PHYS32_ENTRY */
        .asciz  "Xen"
        .quad   pvh_entry - _start + LOAD
notes_end:

        .code32
native_entry:
        mov     $STACK_TOP, %esp
        mov     $(msg_wrong - _start + LOAD), %esi
        call    puts
        mov     $1, %al
        jmp     exit

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
exit:
        mov     $DEBUG_EXIT, %dx
        out     %al, %dx
        hlt

putc:                                   /* AL to COM1 */
        mov     $COM1, %dx
        out     %al, %dx
        ret

puts:                                   /* the NUL-terminated string at ESI */
        lodsb
        test    %al, %al
        jz      2f
        call    putc
        jmp     puts
2:      ret

puthex:                                 /* EAX in hex, without leading zeros */
        mov     %eax, %edi
        mov     $28, %cl
        xor     %ch, %ch                /* a digit printed yet */
3:      mov     %edi, %eax
        shr     %cl, %eax
        and     $0xf, %eax
        or      %al, %ch
        jnz     4f
        test    %cl, %cl
        jnz     5f                      /* a leading zero (not the last digit) */
4:      mov     $(hexdigits - _start + LOAD), %esi
        mov     (%esi,%eax), %al
        push    %ecx
        call    putc
        pop     %ecx
5:      sub     $4, %cl
        jns     3b
        ret

hexdigits:   .ascii "0123456789abcdef"
msg_wrong:   .asciz "wrong entry\n"
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
