/*
 * multiboot.S - a multiboot (v1) kernel, for kvmpy's multiboot loader and fw_cfg device.
 *
 * Its multiboot header asks for memory information and uses the "a.out kludge" (flag bit
 * 16): the header's address fields load the whole file at 1 MiB, with BSS_SIZE bytes of
 * zeroed memory after it (a scratch buffer, then the stack), and enter at `entry` in flat
 * 32-bit protected mode, paging off, EAX = 0x2BADB002 and EBX = the multiboot information
 * structure.  (Run as a flat image at 0x7c00 in real mode, it halts at once.)
 * It is linked at 0x7c00 like every guest but runs at 1 MiB, so it addresses its data
 * relative to EBP = 1 MiB (the load address its header names).
 *
 * It prints to COM1, every number as 8 hex digits:
 *
 *   multiboot flags=F mem_lower=L mem_upper=U
 *   cmdline=<the kernel's command line>
 *   mods=N[ module=<the module's bytes> args=<its command line>]...
 *   mmap BASE+LENGTH TYPE                  (one line per entry, the low 32 bits)
 *   fw_cfg signature=QEMU cpus=N ram=HIGHLOW
 *   etc/e820 select=S size=Z matches the mmap
 *
 * and checks that EAX held the boot magic, that fw_cfg's RAM size is mem_upper + 1 MiB,
 * and that fw_cfg's etc/e820 file (found through the file directory) has the mmap's
 * entries.  Then isa-debug-exit: 0 if every check passed, else "FAIL: <what>" and 1.
 */
        .include "multiboot.inc"
        .set COM1,          0x3f8
        .set DEBUG_EXIT,    0xf4
        .set FW_CFG_SEL,    0x510
        .set FW_CFG_DATA,   0x511
        .set FW_SIGNATURE,  0x00
        .set FW_RAM_SIZE,   0x03
        .set FW_NB_CPUS,    0x05
        .set FW_FILE_DIR,   0x19
        .set FILE_ENTRY,    64          /* size, select, reserved, 56-byte name */
        .set E820_ENTRY,    20          /* u64 address, u64 length, u32 type */
        .set LOAD,          0x100000
        .set BUF_SIZE,      0x1000
        .set BSS_SIZE,      0x2000      /* the buffer, then the stack */
        .set MB_FLAGS,      0x00010002  /* memory information; the a.out kludge */
        .set BOOT_MAGIC,    0x2badb002
        .set MBI_FLAGS,     0           /* offsets in the multiboot information */
        .set MBI_MEM_LOWER, 4
        .set MBI_MEM_UPPER, 8
        .set MBI_CMDLINE,   16
        .set MBI_MODS_COUNT, 20
        .set MBI_MODS_ADDR, 24
        .set MBI_MMAP_LENGTH, 44
        .set MBI_MMAP_ADDR, 48

/* ESI = the address of `label` where the image runs */
.macro  ADDR label
        lea     (\label - _start)(%ebp), %esi
.endm
.macro  PUTS label
        ADDR    \label
        call    puts
.endm

        .text
        .code32
        MULTIBOOT_START MB_FLAGS, LOAD, LOAD + (image_end - _start) + BSS_SIZE, LOAD + (entry - _start)

entry:                                  /* no stack yet: the spec gives none */
        mov     $LOAD, %ebp
        lea     (image_end - _start + BSS_SIZE)(%ebp), %esp
        cmp     $BOOT_MAGIC, %eax
        je      2f
        ADDR    fail_magic
        jmp     fail
2:      PUTS    msg_flags
        mov     MBI_FLAGS(%ebx), %eax
        call    puthex
        PUTS    msg_lower
        mov     MBI_MEM_LOWER(%ebx), %eax
        call    puthex
        PUTS    msg_upper
        mov     MBI_MEM_UPPER(%ebx), %eax
        call    puthex
        PUTS    msg_cmdline
        mov     MBI_CMDLINE(%ebx), %esi
        call    puts

        PUTS    msg_mods                /* the modules */
        mov     MBI_MODS_COUNT(%ebx), %eax
        call    puthex
        mov     MBI_MODS_ADDR(%ebx), %edi
        mov     MBI_MODS_COUNT(%ebx), %ecx
3:      jecxz   4f
        push    %ecx
        push    %edi
        PUTS    msg_module
        mov     (%edi), %esi            /* mod_start */
        mov     4(%edi), %ecx           /* mod_end */
        sub     %esi, %ecx
        mov     $COM1, %dx
        rep outsb
        PUTS    msg_args
        pop     %edi
        mov     8(%edi), %esi
        call    puts
        add     $16, %edi
        pop     %ecx
        dec     %ecx
        jmp     3b
4:      mov     $'\n', %al
        call    putc

        mov     MBI_MMAP_ADDR(%ebx), %edi       /* the memory map */
5:      mov     MBI_MMAP_ADDR(%ebx), %eax
        add     MBI_MMAP_LENGTH(%ebx), %eax
        cmp     %eax, %edi
        jae     6f
        PUTS    msg_mmap
        mov     4(%edi), %eax           /* base_addr, low half */
        call    puthex
        mov     $'+', %al
        call    putc
        mov     12(%edi), %eax          /* length, low half */
        call    puthex
        mov     $' ', %al
        call    putc
        mov     20(%edi), %eax          /* type */
        call    puthex
        mov     $'\n', %al
        call    putc
        mov     (%edi), %eax
        lea     4(%edi, %eax), %edi
        jmp     5b

6:      PUTS    msg_fwcfg               /* fw_cfg */
        mov     $FW_SIGNATURE, %ax
        mov     $4, %ecx
        call    fw_read
        ADDR    buffer
        mov     $4, %ecx
        mov     $COM1, %dx
        rep outsb
        PUTS    msg_cpus
        mov     $FW_NB_CPUS, %ax
        mov     $2, %ecx
        call    fw_read
        movzwl  (buffer - _start)(%ebp), %eax
        call    puthex
        PUTS    msg_ram
        mov     $FW_RAM_SIZE, %ax
        mov     $8, %ecx
        call    fw_read
        mov     (buffer - _start + 4)(%ebp), %eax
        call    puthex
        mov     (buffer - _start)(%ebp), %eax
        call    puthex
        mov     $'\n', %al
        call    putc
        mov     MBI_MEM_UPPER(%ebx), %eax       /* RAM = mem_upper KiB + 1 MiB */
        add     $1024, %eax
        shl     $10, %eax
        ADDR    fail_ram
        cmp     (buffer - _start)(%ebp), %eax
        jne     fail
        cmpl    $0, (buffer - _start + 4)(%ebp)
        jne     fail

        mov     $FW_FILE_DIR, %ax       /* the file directory: find etc/e820 */
        mov     $4, %ecx
        call    fw_read
        mov     (buffer - _start)(%ebp), %ecx
        bswap   %ecx                    /* the directory is big-endian */
7:      ADDR    fail_nofile
        test    %ecx, %ecx
        jz      fail
        push    %ecx
        lea     (buffer - _start)(%ebp), %edi
        mov     $FILE_ENTRY, %ecx
        call    fw_read_more
        ADDR    name_e820
        lea     (buffer - _start + 8)(%ebp), %edi
        mov     $(name_e820_end - name_e820), %ecx
        repe cmpsb
        pop     %ecx
        je      8f
        dec     %ecx
        jmp     7b
8:      mov     (buffer - _start)(%ebp), %esi
        bswap   %esi                    /* the file's size */
        movzwl  (buffer - _start + 4)(%ebp), %edi
        rol     $8, %di                 /* its select, big-endian */
        push    %esi
        push    %edi
        PUTS    msg_select
        mov     (%esp), %eax
        call    puthex
        PUTS    msg_size
        mov     4(%esp), %eax
        call    puthex
        pop     %eax                    /* read the file */
        mov     (%esp), %ecx
        ADDR    fail_nofile
        cmp     $BUF_SIZE, %ecx
        ja      fail
        call    fw_read
        pop     %edx                    /* its size */

        mov     MBI_MMAP_ADDR(%ebx), %esi       /* compare it with the mmap */
        lea     (buffer - _start)(%ebp), %edi
9:      mov     MBI_MMAP_ADDR(%ebx), %eax
        add     MBI_MMAP_LENGTH(%ebx), %eax
        cmp     %eax, %esi
        jae     10f
        push    %esi
        lea     4(%esi), %esi
        mov     $E820_ENTRY, %ecx
        repe cmpsb
        pop     %esi
        jne     11f
        sub     $E820_ENTRY, %edx
        mov     (%esi), %eax
        lea     4(%esi, %eax), %esi
        jmp     9b
10:     test    %edx, %edx              /* every byte of the file compared */
        jnz     11f
        PUTS    msg_match
        xor     %al, %al
        jmp     exit
11:     ADDR    fail_e820

fail:                                   /* ESI = what failed */
        push    %esi
        PUTS    msg_fail
        pop     %esi
        call    puts
        mov     $'\n', %al
        call    putc
        mov     $1, %al
exit:   mov     $DEBUG_EXIT, %dx
        out     %al, %dx
        cli
        hlt

/* fw_read: select item AX, then read ECX bytes into the buffer; fw_read_more: ECX more
 * bytes of the selected item into EDI.  Clobber EAX, ECX, EDX, EDI. */
fw_read:
        mov     $FW_CFG_SEL, %dx
        out     %ax, %dx
        lea     (buffer - _start)(%ebp), %edi
fw_read_more:
        mov     $FW_CFG_DATA, %dx
        rep insb
        ret

/* puts: the NUL-terminated string at ESI; clobbers EAX, EDX, ESI */
puts:
        mov     $COM1, %dx
1:      lodsb
        test    %al, %al
        jz      2f
        out     %al, %dx
        jmp     1b
2:      ret

/* putc: AL; clobbers EDX */
putc:
        mov     $COM1, %dx
        out     %al, %dx
        ret

/* puthex: EAX as 8 hex digits; clobbers EAX, ECX, EDX */
puthex:
        push    %esi
        mov     %eax, %esi
        mov     $8, %ecx
        mov     $COM1, %dx
1:      rol     $4, %esi
        mov     %esi, %eax
        and     $0xf, %al
        add     $'0', %al
        cmp     $'9', %al
        jbe     2f
        add     $('a' - '0' - 10), %al
2:      out     %al, %dx
        loop    1b
        pop     %esi
        ret

msg_flags:   .asciz "multiboot flags="
msg_lower:   .asciz " mem_lower="
msg_upper:   .asciz " mem_upper="
msg_cmdline: .asciz "\ncmdline="
msg_mods:    .asciz "\nmods="
msg_module:  .asciz " module="
msg_args:    .asciz " args="
msg_mmap:    .asciz "mmap "
msg_fwcfg:   .asciz "fw_cfg signature="
msg_cpus:    .asciz " cpus="
msg_ram:     .asciz " ram="
msg_select:  .asciz "etc/e820 select="
msg_size:    .asciz " size="
msg_match:   .asciz " matches the mmap\n"
msg_fail:    .asciz "FAIL: "
fail_magic:  .asciz "EAX is not the multiboot boot magic"
fail_ram:    .asciz "fw_cfg's RAM size is not mem_upper + 1 MiB"
fail_nofile: .asciz "no etc/e820 of at most 4 KiB in fw_cfg's file directory"
fail_e820:   .asciz "fw_cfg's etc/e820 differs from the multiboot mmap"
name_e820:   .asciz "etc/e820"
name_e820_end:
        .align  16
image_end:
        .set    buffer, image_end       /* in the BSS the loader zeroes */
