"""The bench guest computes what the Python model says, on kvmpy, the host's KVM and QEMU.

bench/run.py credits the host and QEMU with kvmpy's instruction count, which is only fair if
all three ran the same program to the same result: these tests pin that down with small
workload counts (the full-size runs are the benchmark itself).
"""

import importlib.util
import pathlib
import shutil
import sys

import pytest

BENCH_DIR = pathlib.Path(__file__).resolve().parents[2] / "bench"
SMALL = {"int": 20_000, "sieve32": 1, "memcpy64": 10}


def _bench_module(name):
    spec = importlib.util.spec_from_file_location("kvmpy_bench_" + name, BENCH_DIR / (name + ".py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module         # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


workloads = _bench_module("workloads")
runners = _bench_module("runners")


def test_model_knows_the_primes():
    # the sieve's reference: 6542 primes below 65536, summing to 202288087
    assert workloads.expected_output({"sieve32": 2}) == "sieve32 6542 404576174\r\nbench done\r\n"


@pytest.mark.parametrize("workload", workloads.WORKLOADS)
def test_each_workload_on_kvmpy_prints_the_model_checksum(workload):
    counts = {workload: SMALL[workload]}
    run = runners.run_vmm(workloads.image(counts), "soft")
    assert run.output == workloads.expected_output(counts)
    assert run.icount > 100_000


def test_empty_guest_only_boots_and_exits():
    run = runners.run_vmm(workloads.image({}), "soft")
    assert run.output == "bench done\r\n"
    assert run.icount < 20_000


def test_image_is_a_boot_sector_with_a_parameter_block():
    image = workloads.image(SMALL)
    assert image[510:512] == b"\x55\xaa"
    assert image[512:520] == b"KVMPYBNC"
    with pytest.raises(ValueError):
        workloads.image({"float": 1})


@pytest.mark.host
def test_host_kvm_computes_the_same_checksums():
    run = runners.run_vmm(workloads.image(SMALL), "host")
    assert run.output == workloads.expected_output(SMALL)


@pytest.mark.skipif(shutil.which(runners.QEMU) is None, reason="QEMU is not installed")
def test_qemu_boots_the_image_from_disk_and_computes_the_same_checksums():
    run = runners.run_qemu(workloads.image(SMALL))
    assert run.output.endswith(workloads.expected_output(SMALL))
