"""fcnseg.machine: the bfloat16 units read from /proc/cpuinfo, which decide the recipe's precision."""

import fcnseg.machine as machine

# Flags lines as the kernel writes them (shortened), one per CPU family the recipe has run on.
XEON_AMX = "model name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n"
ZEN4 = "model name\t: AMD EPYC 9B14\nflags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16 avx512_vp2intersect\n"
ZEN3 = "model name\t: AMD EPYC 7B13\nflags\t\t: fpu avx avx2 fma vaes\n"


def test_bf16_units_name_amx_and_avx512_bf16_from_the_flags():
    assert machine.cpu_bf16_units(XEON_AMX) == ("AMX", "AVX512_BF16")
    assert machine.cpu_bf16_units(ZEN4) == ("AVX512_BF16",)
    assert machine.cpu_bf16_units(ZEN3) == ()


def test_bf16_units_match_whole_flags_only():
    # "avx512_bf16x" is not a flag the recipe knows; a substring match would count it.
    assert machine.cpu_bf16_units("flags\t: avx512_bf16x amx_bf16_extra\n") == ()
    assert machine.cpu_bf16_units("model name\t: no flags line\n") == ()
