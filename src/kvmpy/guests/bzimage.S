/*
 * bzimage.S - a tiny "kernel" in the Linux bzImage format, for kvmpy's boot-protocol loader.
 *
 * Laid out as Documentation/arch/x86/boot.rst says: a boot sector with the setup header at
 * 0x1f1, one setup sector (never run: the loader enters the protected-mode part directly),
 * then the protected-mode kernel, which the loader copies to code32_start (1 MiB).  Its
 * 32-bit entry is at +0, its 64-bit entry at +0x200.  Either entry reads the zero page
 * (struct boot_params) that ESI/RSI points to and prints to COM1:
 *
 *   64-bit: "linux64 cmdline=<command line> initrd=<the initrd's bytes> e820=<n>\n"
 *   32-bit: "linux32 cmdline=<command line>\n"
 *
 * then ends the run through isa-debug-exit.  Only position-independent code: the image is
 * linked at 0x7c00 like every guest, but runs at 1 MiB.  The protocol gives no stack (Linux
 * makes its own): the guest's is the free RAM below the zero page.
 */
        .set COM1,        0x3f8
        .set DEBUG_EXIT,  0xf4
        .set BP_E820_ENTRIES, 0x1e8
        .set BP_RAMDISK_IMAGE, 0x218
        .set BP_RAMDISK_SIZE, 0x21c
        .set BP_CMD_LINE_PTR, 0x228
        .set STACK_TOP,   0x7000

        .text
        .globl  _start
_start:                                 /* the boot sector: run as a flat image, it stops */
        .code16
        cli
        hlt
        .org    0x1f1
        .byte   1                       /* setup_sects */
        .word   0                       /* root_flags */
        .long   0                       /* syssize */
        .word   0                       /* ram_size */
        .word   0xffff                  /* vid_mode */
        .word   0                       /* root_dev */
        .word   0xaa55                  /* boot_flag */
        .org    0x200
        .byte   0xeb, 0x66              /* jump over the header (real-mode setup: unused) */
        .ascii  "HdrS"                  /* header */
        .word   0x020f                  /* version 2.15 */
        .long   0                       /* realmode_swtch */
        .word   0                       /* start_sys_seg */
        .word   0                       /* kernel_version */
        .byte   0                       /* type_of_loader */
        .byte   0x01                    /* loadflags: LOADED_HIGH */
        .word   0                       /* setup_move_size */
        .long   0x100000                /* code32_start */
        .long   0, 0                    /* ramdisk_image, ramdisk_size */
        .long   0                       /* bootsect_kludge */
        .word   0                       /* heap_end_ptr */
        .byte   0, 0                    /* ext_loader_ver, ext_loader_type */
        .long   0                       /* cmd_line_ptr */
        .long   0x7fffffff              /* initrd_addr_max */
        .long   0x200000                /* kernel_alignment */
        .byte   0, 0                    /* relocatable_kernel, min_alignment */
        .word   0x0001                  /* xloadflags: XLF_KERNEL_64 */
        .long   255                     /* cmdline_size */
        .long   0                       /* hardware_subarch */
        .quad   0                       /* hardware_subarch_data */
        .long   0, 0                    /* payload_offset, payload_length */
        .quad   0                       /* setup_data */
        .quad   0x100000                /* pref_address */
        .long   0x10000                 /* init_size */
        .long   0                       /* handover_offset */
        .long   0                       /* kernel_info_offset */

        .org    0x400                   /* the protected-mode kernel: loaded at 1 MiB */
pm_start:
        .code32
startup_32:
        mov     $STACK_TOP, %esp
        mov     %esi, %ebp              /* the zero page */
        call    1f
1:      pop     %ebx                    /* where this code runs */
        lea     (msg32 - 1b)(%ebx), %esi
        call    puts32
        mov     BP_CMD_LINE_PTR(%ebp), %esi
        call    puts32
        mov     $COM1, %dx
        mov     $'\n', %al
        out     %al, %dx
        mov     $DEBUG_EXIT, %dx
        xor     %al, %al
        out     %al, %dx
        hlt

puts32:
        mov     $COM1, %dx
2:      lodsb
        test    %al, %al
        jz      3f
        out     %al, %dx
        jmp     2b
3:      ret

msg32:  .asciz  "linux32 cmdline="

        .org    pm_start + 0x200
        .code64
startup_64:
        mov     $STACK_TOP, %esp
        mov     %rsi, %rbp              /* the zero page */
        lea     msg64(%rip), %rsi
        call    puts64
        mov     BP_CMD_LINE_PTR(%rbp), %esi
        call    puts64
        lea     msg_initrd(%rip), %rsi
        call    puts64
        mov     BP_RAMDISK_IMAGE(%rbp), %esi
        mov     BP_RAMDISK_SIZE(%rbp), %ecx
        mov     $COM1, %dx
        jrcxz   5f
        rep outsb
5:      lea     msg_e820(%rip), %rsi
        call    puts64
        movzbl  BP_E820_ENTRIES(%rbp), %eax
        add     $'0', %al
        out     %al, %dx
        mov     $'\n', %al
        out     %al, %dx
        mov     $DEBUG_EXIT, %dx
        xor     %al, %al
        out     %al, %dx
        hlt

puts64:
        mov     $COM1, %dx
6:      lodsb
        test    %al, %al
        jz      7f
        out     %al, %dx
        jmp     6b
7:      ret

msg64:      .asciz "linux64 cmdline="
msg_initrd: .asciz " initrd="
msg_e820:   .asciz " e820="
