"""`pcmoe dp-budget`: the RDP accountant of DP-SGD from the command line. Both questions (the
epsilon a noise multiplier spends, the noise multiplier a target epsilon needs) give Opacus's
published numbers, as text and as JSON; every bad input is refused with a message and a non-zero
exit (2 for usage errors, 1 for an unreachable target)."""
import json

from common import check, finish, run

PUBLISHED = ["--q", "0.04", "--steps", "2250", "--delta", "1e-5"]


def close(got, want, rel=1e-6):
    return abs(got - want) <= rel * abs(want)


# The epsilon that sigma = 1.5 spends.
code, out, err = run("dp-budget", "--sigma", "1.5", *PUBLISHED, "--json")
check(code == 0, f"dp-budget --sigma --json runs (exit {code})")
if code != 0:
    print("   stderr was:", err.strip()[:500])
    finish()
r = json.loads(out)
print(f"sigma 1.5: improved eps {r['improved']['epsilon']!r} (order {r['improved']['best_order']}), "
      f"classic eps {r['classic']['epsilon']!r} (order {r['classic']['best_order']})")
check(r["question"] == "epsilon" and r["sigma"] == 1.5 and r["q"] == 0.04 and r["steps"] == 2250 and r["delta"] == 1e-5,
      "the JSON echoes the question and its inputs")
check(close(r["improved"]["epsilon"], 7.3291111714), f"improved epsilon 7.3291111714 ({r['improved']['epsilon']})")
check(r["improved"]["best_order"] == 3.9, f"improved best order 3.9 ({r['improved']['best_order']})")
check(close(r["classic"]["epsilon"], 8.0738482772), f"classic epsilon 8.0738482772 ({r['classic']['epsilon']})")
check(r["classic"]["best_order"] == 4.1, f"classic best order 4.1 ({r['classic']['best_order']})")

code, out, err = run("dp-budget", "--sigma", "1.5", *PUBLISHED)
check(code == 0 and "epsilon 7.3291111714" in out and "epsilon 8.0738482772" in out
      and "best order 3.9" in out and "best order 4.1" in out,
      "the text output shows both epsilons and their orders")
if code != 0:
    print("   output was:", out.strip()[:500], err.strip()[:500])

# The sigma that epsilon = 8 needs.
code, out, err = run("dp-budget", "--epsilon", "8", *PUBLISHED, "--json")
check(code == 0, f"dp-budget --epsilon --json runs (exit {code})")
if code == 0:
    r = json.loads(out)
    print(f"epsilon 8: improved sigma {r['improved']['sigma']!r} (eps {r['improved']['epsilon']!r}), "
          f"classic sigma {r['classic']['sigma']!r} (eps {r['classic']['epsilon']!r})")
    check(r["question"] == "sigma" and r["target_epsilon"] == 8, "the JSON echoes the target")
    check(close(r["improved"]["sigma"], 1.416015625), f"improved sigma 1.416015625 ({r['improved']['sigma']})")
    check(8 - 0.01 <= r["improved"]["epsilon"] <= 8, "the improved sigma spends epsilon in [7.99, 8]")
    check(8 - 0.01 <= r["classic"]["epsilon"] <= 8, "the classic sigma spends epsilon in [7.99, 8]")
    check(r["classic"]["sigma"] > r["improved"]["sigma"], "the classic conversion needs more noise")
code, out, err = run("dp-budget", "--epsilon", "8", *PUBLISHED)
check(code == 0 and "sigma 1.416015625 " in out, "the text output shows sigma 1.416015625")

# Round trip: the calibrated sigma, fed back, spends at most the target.
code, out, _ = run("dp-budget", "--epsilon", "3", "--q", "0.01", "--steps", "5000", "--delta", "1e-6", "--json")
if code == 0:
    sigma = json.loads(out)["improved"]["sigma"]
    code2, out2, _ = run("dp-budget", "--sigma", repr(sigma), "--q", "0.01", "--steps", "5000", "--delta", "1e-6", "--json")
    eps = json.loads(out2)["improved"]["epsilon"] if code2 == 0 else None
    check(eps is not None and 2.99 <= eps <= 3, f"round trip: sigma {sigma} spends epsilon {eps} in [2.99, 3]")
else:
    check(False, "dp-budget --epsilon 3 runs")


def expect_error(args, needle, what, want_code=2):
    code, out, err = run("dp-budget", *args)
    ok = code == want_code and needle in err and out == ""
    check(ok, f"{what}: exit {code} (want {want_code}), stderr mentions {needle!r}")
    if not ok:
        print("   stderr was:", err.strip()[:500])


expect_error(["--epsilon", "0", *PUBLISHED], "--epsilon must be > 0", "epsilon 0")
expect_error(["--epsilon", "-1", *PUBLISHED], "--epsilon must be > 0", "negative epsilon")
expect_error(["--sigma", "0", *PUBLISHED], "--sigma must be > 0", "sigma 0")
expect_error(["--sigma", "-1.5", *PUBLISHED], "--sigma must be > 0", "negative sigma")
expect_error(["--sigma", "1.5", "--q", "0.04", "--steps", "2250", "--delta", "0"], "--delta must be in (0, 1)", "delta 0")
expect_error(["--sigma", "1.5", "--q", "0.04", "--steps", "2250", "--delta", "1"], "--delta must be in (0, 1)", "delta 1")
expect_error(["--sigma", "1.5", "--q", "0.04", "--steps", "2250", "--delta", "-1e-5"], "--delta must be in (0, 1)",
             "negative delta")
expect_error(["--sigma", "1.5", "--q", "0", "--steps", "2250", "--delta", "1e-5"], "--q must be in (0, 1]", "q 0")
expect_error(["--sigma", "1.5", "--q", "1.5", "--steps", "2250", "--delta", "1e-5"], "--q must be in (0, 1]", "q > 1")
expect_error(["--sigma", "1.5", "--q", "0.04", "--steps", "0", "--delta", "1e-5"], "--steps must be at least 1", "steps 0")
expect_error(["--sigma", "1.5", "--q", "0.04", "--steps", "-3", "--delta", "1e-5"], "--steps must be at least 1",
             "negative steps")
expect_error(["--sigma", "1.5", "--q", "0.04", "--steps", "22.5", "--delta", "1e-5"], "--steps expects an integer",
             "fractional steps")
expect_error(["--sigma", "1.5", "--epsilon", "8", *PUBLISHED], "not both", "both --sigma and --epsilon")
expect_error(PUBLISHED, "give --sigma", "neither --sigma nor --epsilon")
expect_error(["--sigma", "abc", *PUBLISHED], "--sigma expects a finite number", "non-numeric sigma")
expect_error(["--epsilon", "8x", *PUBLISHED], "--epsilon expects a finite number", "trailing junk in epsilon")
expect_error(["--sigma", "1.5", "--q", "nan", "--steps", "2250", "--delta", "1e-5"], "--q expects a finite number", "q nan")
expect_error(["--sigma", "1.5", "--q", "0.04", "--steps", "lots", "--delta", "1e-5"], "--steps expects an integer",
             "non-numeric steps")
expect_error(["--sigma", "1.5", "--steps", "2250", "--delta", "1e-5"], "missing --q", "missing --q")
expect_error(["--sigma", "1.5", "--q", "0.04", "--delta", "1e-5"], "missing --steps", "missing --steps")
expect_error(["--sigma", "1.5", "--q", "0.04", "--steps", "2250"], "missing --delta", "missing --delta")
expect_error(["--sigma", "1.5", *PUBLISHED, "--delta"], "--delta needs a value", "flag without value")
expect_error(["--sigma", "1.5", *PUBLISHED, "--bogus", "1"], "unknown argument '--bogus'", "unknown argument")
# Given N units, delta follows a run's rule: 1/(10N) by default (N = 10^4: the published 1e-5
# and its epsilon), a delta >= 1/N refused unless --allow-weak-delta.
code, out, _ = run("dp-budget", "--sigma", "1.5", "--q", "0.04", "--steps", "2250", "--units", "10000", "--json")
r = json.loads(out) if code == 0 else {}
check(code == 0 and r["delta"] == 1e-5 and r["units"] == 10000 and close(r["improved"]["epsilon"], 7.3291111714),
      f"--units 10000: delta 1/(10N) = 1e-5, epsilon 7.3291111714 ({r.get('improved')})")
WEAK = ["--sigma", "1.5", "--q", "0.04", "--steps", "2250", "--units", "10000", "--delta", "1e-4"]
expect_error(WEAK, "--allow-weak-delta", "delta 1/N with --units", want_code=1)
code, out, _ = run("dp-budget", *WEAK, "--allow-weak-delta", "--json")
check(code == 0 and json.loads(out)["delta"] == 1e-4, "--allow-weak-delta accepts delta 1/N")
expect_error(["--sigma", "1.5", "--q", "0.04", "--steps", "2250", "--units", "0"], "--units must be at least 1", "units 0")
# With orders up to 63, no noise gets epsilon below about 0.103 at delta 1e-5: a runtime error.
expect_error(["--epsilon", "0.05", *PUBLISHED], "out of reach", "unreachable target epsilon", want_code=1)
finish()
