"""Architectural definitions of x86-64: register numbers and the bits of RFLAGS, CR0, CR4 and EFER.

The one home of these numbers (Linux: arch/x86/include/uapi/asm/processor-flags.h and
msr-index.h's EFER bits), below everything that uses them: the register file
(``kvmpy.hw.state``), the execution units, VM entry's checks and KVM's register code.
"""

RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI = range(8)
ES, CS, SS, DS, FS, GS = range(6)
SEG_NAMES = ("es", "cs", "ss", "ds", "fs", "gs")

# RFLAGS bits
CF, PF, AF, ZF, SF, TF, IF, DF, OF = 1, 4, 0x10, 0x40, 0x80, 0x100, 0x200, 0x400, 0x800
IOPL, NT, RF, VM, AC, VIF, VIP, ID = 0x3000, 0x4000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000
ARITH_FLAGS = CF | PF | AF | ZF | SF | OF
# Bits software can change through POPF/IRET/set_rflags (bit 1 always reads 1).
RFLAGS_WRITABLE = ARITH_FLAGS | TF | IF | DF | IOPL | NT | RF | VM | AC | VIF | VIP | ID

# Control register bits
CR0_PE, CR0_MP, CR0_EM, CR0_TS, CR0_ET, CR0_NE = 1, 2, 4, 8, 0x10, 0x20
CR0_WP, CR0_AM, CR0_NW, CR0_CD, CR0_PG = 1 << 16, 1 << 18, 1 << 29, 1 << 30, 1 << 31
CR4_VME, CR4_PVI, CR4_TSD, CR4_DE, CR4_PSE, CR4_PAE, CR4_MCE, CR4_PGE = 1, 2, 4, 8, 0x10, 0x20, 0x40, 0x80
CR4_PCE, CR4_OSFXSR, CR4_OSXMMEXCPT, CR4_UMIP, CR4_LA57 = 0x100, 0x200, 0x400, 0x800, 0x1000
CR4_FSGSBASE, CR4_PCIDE, CR4_OSXSAVE, CR4_SMEP, CR4_SMAP = 1 << 16, 1 << 17, 1 << 18, 1 << 20, 1 << 21
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1, 1 << 8, 1 << 10, 1 << 11

# Debug registers (SDM 18.2): DR6's status bits, the value it reads with none of them set
# (its reserved bits read 1: "active low"), DR7's enable bits and their fields
DR6_B0_B3, DR6_BD, DR6_BS = 0xF, 1 << 13, 1 << 14
DR6_ACTIVE_LOW = 0xFFFF0FF0
DR7_BP_EN_MASK = 0xFF               # L0 G0 ... L3 G3
DR7_FIXED_1 = 0x400
DR7_GD = 1 << 13                    # general detect: any MOV DR is a #DB fault (DR6.BD)
DR7_RW_SHIFT, DR7_LEN_SHIFT = 16, 18  # + 4 * n: breakpoint n's R/W (00 execute, 01 write, 11 read/write) and LEN


def canonical(addr, bits: int = 48) -> bool:
    """A 64-bit linear address is canonical when bits 63..bits-1 are all equal (48-bit VAs
    unless ``bits`` says 57)."""
    top = (addr & ((1 << 64) - 1)) >> (bits - 1)
    return top == 0 or top == (1 << (65 - bits)) - 1
