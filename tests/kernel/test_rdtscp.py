"""RDTSCP, RDPID and IA32_TSC_AUX through KVM: with the features in the guest's CPUID they
read the TSC_AUX the guest wrote; without them WRMSR/RDMSR of TSC_AUX are #GP and both
instructions #UD (VMX's "enable RDTSCP" off).  On kvmpy under each vendor module and MMU mode,
and on the host's /dev/kvm, whose answers depend on its CPU (RDPID) and vendor module: those
are derived from what the host reports (see _host_with_rdtscp, _host_without_rdtscp)."""

from tests.support import rawvmm
from tests.support.guestvm import GP_SKIP2, Machine, assemble, prot32, putc
from tests.support.vendors import scenario_tests

TSC_AUX = 0xC0000103
# #UD: print U and skip EBP bytes (the faulting instruction's length), EAX and ECX kept (no
# IRET: the host's emulator has it only in real mode)
UD_SKIP = (" push %eax\n push %edx\n" + putc("U") + " pop %edx\n pop %eax\n"
           " addl %ebp, (%esp)\n push %eax\n mov 12(%esp), %eax\n xchg %eax, 4(%esp)\n"
           " mov %eax, 8(%esp)\n pop %eax\n popf\n ret $4\n")
GUEST = f"""
 mov ${TSC_AUX:#x}, %ecx
 mov $0x1234, %eax
 xor %edx, %edx
 wrmsr
 mov $0x11111111, %ecx
 mov $3, %ebp
 rdtscp
 mov %ecx, %eax
 out %eax, $0x81
 mov $0x22222222, %eax
 mov $4, %ebp
 .byte 0xf3, 0x0f, 0xc7, 0xf8       /* rdpid %eax */
 out %eax, $0x82
 hlt
"""
RDTSCP_BIT = 1 << 27                    # CPUID 0x80000001 EDX
RDPID_BIT = 1 << 22                     # CPUID 7.0 ECX


def hide_rdtscp_rdpid(cpuid):
    for e in cpuid.entries[:cpuid.nent]:
        if e.function == 0x80000001:
            e.edx &= ~RDTSCP_BIT
        elif e.function == 7 and e.index == 0:
            e.ecx &= ~RDPID_BIT


def tsc_aux_guest(cpuid_edit):
    """The values the guest OUTs (RDTSCP's ECX, RDPID's EAX) and what it printed."""
    def run(sc):
        m = Machine(sc, assemble(prot32(GUEST, {6: UD_SKIP, 13: GP_SKIP2})), cpuid_edit=cpuid_edit)
        try:
            outs = [(rec["port"], rec["data"]) for rec in (m.step(), m.step())]
            assert m.step()["reason"] == "HLT"
            return {"outs": outs, "console": m.console}
        finally:
            m.close()
    return run


SCENARIOS = {"with_rdtscp": tsc_aux_guest(None), "without_rdtscp": tsc_aux_guest(hide_rdtscp_rdpid)}
EXPECTED = {
    "with_rdtscp": {"outs": [["0x81", "34120000"], ["0x82", "34120000"]], "console": ""},
    # WRMSR #GP, RDTSCP and RDPID #UD: ECX and EAX keep what the guest had put there
    "without_rdtscp": {"outs": [["0x81", "11111111"], ["0x82", "22222222"]], "console": "GUU"},
}
# seen on a kvm_pvm host: WRMSR TSC_AUX #GP whatever the CPUID, then an emulation failure at
# RDTSCP.  kvm_intel and kvm_amd run both instructions on the processor.
HOST_SKIP = rawvmm.kvm_pvm_quirks(
    {name: "kvm_pvm runs the guest in KVM's emulator, which has no RDTSCP and refuses TSC_AUX" for name in SCENARIOS})


def _host_with_rdtscp():
    """RDPID is newer than RDTSCP (AMD Zen 2, Intel Ice Lake): where the host's supported
    CPUID lacks it, KVM does not give it to the guest either and the guest's RDPID is #UD."""
    if rawvmm.supported_feature(rawvmm.HOST, 7, 0, "ecx", RDPID_BIT.bit_length() - 1):
        return EXPECTED["with_rdtscp"]
    return {"outs": [["0x81", "34120000"], ["0x82", "22222222"]], "console": "U"}


def _host_without_rdtscp():
    """SVM can intercept RDTSCP but not RDPID, so under kvm_amd on a CPU with RDPID the
    guest's RDPID runs even with the feature hidden, and reads the TSC_AUX KVM loads for it
    (svm->tsc_aux, 0: the guest's WRMSR was refused).  VMX's "enable RDTSCP" gates both."""
    if rawvmm.host_kvm_module() == "kvm_amd" and rawvmm.supported_feature(
            rawvmm.HOST, 7, 0, "ecx", RDPID_BIT.bit_length() - 1):
        return {"outs": [["0x81", "11111111"], ["0x82", "00000000"]], "console": "GU"}
    return EXPECTED["without_rdtscp"]


test_tsc_aux_on_the_host, test_tsc_aux_on_kvmpy = scenario_tests(
    "tests.kernel.test_rdtscp", SCENARIOS, EXPECTED, host_skip=HOST_SKIP,
    host_expected={"with_rdtscp": _host_with_rdtscp, "without_rdtscp": _host_without_rdtscp})
