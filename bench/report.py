"""Ratios against the issue's targets, the Markdown report, and py-spy profile summaries."""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path
from typing import Any

# Issue 25's targets (issue 9's, 1.5x Apache and at most 15 % below the bare proxy, are inside them).
MIN_VS_APACHE = 3.5
MAX_P99_VS_APACHE = 0.3
MIN_VS_BARE = 1.15
# --full: 20 routes, assertion and roles on, against the Redis sidecar without them in the same run.
MIN_FULL_OVER_PLAIN = 0.95
MAX_REDIS_OVERHEAD_BYTES = 1024
MAX_RSS_GROWTH_MIB = 30.0
MAX_INVALIDATION_MS = 100.0
MAX_LOGIN_CPU_MS = 5.0
# The project's rule for every change: the working tree's authenticated req/s at least 95 % of the baseline's.
MIN_NEW_OVER_OLD = 0.95
# Other processes' share of the CPUs during a run above which its figures are disturbed (see "other load").
MAX_OTHER_LOAD_PCT = 10.0

OLD = "@old"  # the baseline's twin of a system: "sidecar-redis-cache@old"


def _check(name: str, value: float | None, target: str, ok: bool | None, unit: str = "") -> dict[str, Any]:
    return {"check": name, "value": value, "unit": unit, "target": target, "ok": ok}


def non2xx(out: dict[str, Any]) -> dict[str, int]:
    """Systems whose measured runs got answers that were not 2xx: every request of every system carries a
    valid credential, so their figures measure refusals (an expired session, a refused token), not service."""
    tp: dict[str, Any] = out.get("throughput", {})
    return {name: row["non2xx"] for name, row in tp.items() if row.get("non2xx")}


def ratios(out: dict[str, Any]) -> list[dict[str, Any]]:
    tp: dict[str, Any] = out.get("throughput", {})
    checks: list[dict[str, Any]] = [
        _check(f"{name}: every answer 2xx", count, "0 non-2xx", False, "non-2xx") for name, count in non2xx(out).items()
    ]
    apache = tp.get("apache")
    for name, row in tp.items():
        if not name.startswith("sidecar") or name.endswith(OLD):
            continue
        if apache and name.startswith("sidecar-redis") and apache["rps"]:
            ratio = row["rps"] / apache["rps"]
            checks.append(
                _check(f"{name} / apache req/s", round(ratio, 2), f">= {MIN_VS_APACHE}", ratio >= MIN_VS_APACHE)
            )
            checks.append(
                _check(
                    f"{name} p99 vs apache p99",
                    round(row["p99_ms"], 1),
                    f"<= {MAX_P99_VS_APACHE} x {apache['p99_ms']:.1f} ms",
                    row["p99_ms"] <= MAX_P99_VS_APACHE * apache["p99_ms"],
                    "ms",
                )
            )
        bare = tp.get(f"bare-{row['workers']}w")
        if bare and bare["rps"]:
            ratio = row["rps"] / bare["rps"]
            checks.append(
                _check(
                    f"{name} / bare-{row['workers']}w req/s", round(ratio, 2), f">= {MIN_VS_BARE}", ratio >= MIN_VS_BARE
                )
            )
        passthrough = tp.get(f"passthrough-{row['workers']}w")
        if passthrough and passthrough["rps"]:
            cost = 1 - row["rps"] / passthrough["rps"]
            checks.append(
                _check(f"{name} auth cost vs passthrough-{row['workers']}w", round(100 * cost, 1), "(info)", None, "%")
            )
    full, plain = tp.get((out.get("full") or {}).get("variant", "")), tp.get("sidecar-redis-cache")
    if full and plain and plain["rps"]:
        ratio = full["rps"] / plain["rps"]
        checks.append(
            _check(
                f"{out['full']['variant']} (routes, assertion, roles) / sidecar-redis-cache req/s",
                round(ratio, 3),
                f">= {MIN_FULL_OVER_PLAIN}",
                ratio >= MIN_FULL_OVER_PLAIN,
            )
        )
        cpu_full, cpu_plain = full.get("cpu_us_per_request"), plain.get("cpu_us_per_request")
        if cpu_full and cpu_plain:
            checks.append(
                _check(
                    f"{out['full']['variant']} / sidecar-redis-cache CPU per request",
                    round(cpu_full / cpu_plain, 3),
                    f"<= {2 - MIN_FULL_OVER_PLAIN:.2f}",
                    cpu_full / cpu_plain <= 2 - MIN_FULL_OVER_PLAIN,
                )
            )
        # The two ran back to back in every repetition: each pair's ratio, and their geometric mean (for reading
        # the noise; the checks above are of the medians).
        pairs = [
            (f["rps"] / p["rps"], f["cpu_us_per_request"] / p["cpu_us_per_request"])
            for f, p in zip(full.get("each") or [], plain.get("each") or [], strict=False)
            if f.get("rps") and p.get("rps") and f.get("cpu_us_per_request") and p.get("cpu_us_per_request")
        ]
        if pairs:
            rps_pairs, cpu_pairs = [r for r, _ in pairs], [c for _, c in pairs]
            checks.append(
                _check(
                    f"{out['full']['variant']} / sidecar-redis-cache req/s, each back-to-back pair "
                    f"({', '.join(f'{r:.2f}' for r in rps_pairs)}; CPU per request "
                    f"{', '.join(f'{c:.2f}' for c in cpu_pairs)}, geometric mean "
                    f"{statistics.geometric_mean(cpu_pairs):.3f}): their geometric mean",
                    round(statistics.geometric_mean(rps_pairs), 3),
                    "(info)",
                    None,
                )
            )
    mem = out.get("redis_memory") or {}
    if mem.get("overhead_bytes") is not None:
        over = mem["overhead_bytes"]
        checks.append(
            _check(
                "Redis MEMORY USAGE - raw tokens+claims",
                over,
                f"<= {MAX_REDIS_OVERHEAD_BYTES} B",
                over <= MAX_REDIS_OVERHEAD_BYTES,
                "B",
            )
        )
    rss = out.get("rss") or {}
    if rss.get("sessions"):
        scaled = rss["growth_mib"] * 10_000 / rss["sessions"]
        checks.append(
            _check(
                f"RSS growth for {rss['sessions']} sessions (all processes)",
                rss["growth_mib"],
                f"<= {MAX_RSS_GROWTH_MIB:.0f} MiB per 10,000",
                scaled <= MAX_RSS_GROWTH_MIB,
                "MiB",
            )
        )
    inv = out.get("invalidation") or {}
    for kind in ("sign_out", "backchannel"):
        if kind in inv:
            ms = inv[kind]["latency_ms"]
            checks.append(
                _check(
                    f"invalidation after {kind} (all workers, 2 replicas)",
                    ms,
                    f"<= {MAX_INVALIDATION_MS:.0f} ms",
                    ms <= MAX_INVALIDATION_MS and not inv[kind]["still_accepted_at_end"],
                    "ms",
                )
            )
    for name, row in (out.get("logins") or {}).items():
        if name.startswith("sidecar") and not name.endswith(OLD) and row.get("rp_cpu_ms_per_callback") is not None:
            ms = row["rp_cpu_ms_per_callback"]
            checks.append(
                _check(f"login CPU, {name}", ms, f"<= {MAX_LOGIN_CPU_MS:.0f} ms", ms <= MAX_LOGIN_CPU_MS, "ms")
            )
    return checks


def comparison(out: dict[str, Any], config_differs: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """New (working tree) against old (``--baseline``), per sidecar variant that ran both: the ratio of the
    median req/s and p99, and of each repetition's pair (which ran back to back: the noise of a pair)."""
    tp: dict[str, Any] = out.get("throughput", {})
    rows = []
    for name, new in tp.items():
        old = tp.get(name + OLD)
        if old is None or name.endswith(OLD):
            continue
        ratio = new["rps"] / old["rps"] if old["rps"] else None
        p99 = new["p99_ms"] / old["p99_ms"] if old["p99_ms"] else None
        pairs = [n["rps"] / o["rps"] for n, o in zip(new["each"], old["each"], strict=False) if o["rps"]]
        invalid = new["non2xx"] or old["non2xx"]
        other = {"new": new.get("other_cpu_pct"), "old": old.get("other_cpu_pct")}
        cpu_new, cpu_old = new.get("cpu_us_per_request"), old.get("cpu_us_per_request")
        rows.append(
            {
                "variant": name,
                "authenticated": not name.startswith("passthrough"),
                "new_rps": round(new["rps"], 1),
                "old_rps": round(old["rps"], 1),
                "rps_ratio": round(ratio, 3) if ratio is not None else None,
                "rps_ratio_per_rep": [round(r, 3) for r in pairs],
                "new_p99_ms": new["p99_ms"],
                "old_p99_ms": old["p99_ms"],
                "p99_ratio": round(p99, 3) if p99 is not None else None,
                "new_cpu_us_per_request": cpu_new,
                "old_cpu_us_per_request": cpu_old,
                "cpu_ratio": round(cpu_new / cpu_old, 3) if cpu_new and cpu_old else None,
                "other_cpu_pct": other,
                "disturbed": any((v or 0) > MAX_OTHER_LOAD_PCT for v in other.values()),
                "non2xx": {"new": new["non2xx"], "old": old["non2xx"]},
                "config_differs": (config_differs or {}).get(name),
                "target": f">= {MIN_NEW_OVER_OLD}",
                "ok": None if ratio is None or invalid else ratio >= MIN_NEW_OVER_OLD,
            }
        )
    return rows


def _comparison_lines(out: dict[str, Any]) -> list[str]:
    rows = out.get("comparison")
    if rows is None:
        return []
    new, old = out.get("new") or {}, out.get("baseline") or {}
    changed = new.get("uncommitted_under_proxy")
    what_new = f"working tree ({new.get('head', '?').split()[0]}" + (
        f" + {changed} uncommitted file(s) under proxy/ or pyproject.toml)" if changed else ", nothing uncommitted)"
    )
    what_old = f"{old.get('ref') or old.get('tree')} = {old.get('head', '?').split()[0]} ({old.get('kind')})"
    lines = [
        "",
        f"### new/old: {what_new} vs {what_old}",
        "",
        f"old ran as {old.get('how')}. Each pair ran back to back in every repetition (order flipped every other "
        "one); the ratios are of the medians; 'per rep' is each repetition's pair (its spread is the noise). "
        "CPU/request is the sidecar's own processes' CPU time per request served (lower is better; less "
        "sensitive to the machine's noise than req/s).",
        "",
        "| variant | new req/s | old req/s | new/old req/s | per rep | new p99 ms | old p99 ms | new/old p99 "
        "| CPU/request new / old µs | new/old CPU | other load new / old | >= 0.95 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|",
    ]
    flagged, info, disturbed = [], [], []
    for r in rows:
        if r["ok"] is None:
            mark = "**invalid** (non-2xx answers)" if any(r["non2xx"].values()) else "-"
        elif r["ok"]:
            mark = "yes"
        elif r["authenticated"]:
            mark = "**NO**"
            flagged.append(r["variant"])
        else:
            mark = "no"
            info.append(r["variant"])
        if not r["authenticated"]:
            mark += " (SSO off: info)"
        if r.get("disturbed"):
            mark += ", disturbed"
            disturbed.append(r["variant"])
        per = ", ".join(f"{x:.2f}" for x in r["rps_ratio_per_rep"])
        other = r["other_cpu_pct"]
        note = f" ({r['config_differs']})" if r.get("config_differs") else ""
        lines.append(
            f"| {r['variant']}{note} | {_num(r['new_rps'], 0)} | {_num(r['old_rps'], 0)} | {_num(r['rps_ratio'], 3)} "
            f"| {per} | {_num(r['new_p99_ms'])} | {_num(r['old_p99_ms'])} | {_num(r['p99_ratio'], 2)} "
            f"| {_num(r.get('new_cpu_us_per_request'), 0)} / {_num(r.get('old_cpu_us_per_request'), 0)} "
            f"| {_num(r.get('cpu_ratio'), 3)} | {_num(other['new'], 0)} % / {_num(other['old'], 0)} % | {mark} |"
        )
    lines.append("")
    if flagged:
        lines.append(
            f"**FLAGGED: authenticated new/old req/s below {MIN_NEW_OVER_OLD} for {', '.join(flagged)}.** Check the "
            "'per rep' spread and the other load before blaming the change; rerun if the machine was busy."
        )
    elif any(r["authenticated"] for r in rows):
        lines.append(f"Every authenticated new/old req/s ratio is >= {MIN_NEW_OVER_OLD}.")
    else:
        lines.append("No authenticated variant ran for both new and old: nothing to compare (see the notes).")
    if info:
        lines.append(f"Below {MIN_NEW_OVER_OLD} without authentication (for information): {', '.join(info)}.")
    if disturbed:
        lines.append(
            f"Disturbed (other processes used more than {MAX_OTHER_LOAD_PCT:.0f} % of the CPUs, median over the "
            f"repetitions, while new or old ran): {', '.join(disturbed)}. Those ratios measure the machine as much "
            "as the change."
        )
    return lines


def _num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def markdown(out: dict[str, Any]) -> str:
    lines: list[str] = []
    wrk = out.get("wrk") or {}
    tp = out.get("throughput") or {}
    versions = out.get("versions") or {}
    lines.append("## sso-sidecar benchmark")
    lines.append("")
    if versions:
        lines.append("Versions: " + "; ".join(f"{k} {v}" for k, v in versions.items()))
    if wrk:
        pin = f", wrk under taskset -c {wrk['pin_cpu']}" if wrk.get("pin_cpu") else ""
        lines.append(
            f"Load: {wrk.get('generator')}, {wrk.get('connections')} connections, {wrk.get('threads')} threads, "
            f"{wrk.get('duration')} s per run{pin}; medians of {out.get('settings', {}).get('reps')} alternating runs; "
            f"machine: {out.get('machine', {}).get('cpus')} CPUs"
        )
    for label in ("new", "baseline"):
        probe = (out.get(label) or {}).get("probe") or {}
        if probe.get("interpreter"):
            lines.append(
                f"The {'baseline' if label == 'baseline' else 'sidecar'}'s interpreter: {probe['interpreter']} (Python "
                f"{probe.get('python_version')}, libpython {probe.get('libpython')})"
            )
    bearer = out.get("bearer")
    if bearer and any(row.get("credential") == "Authorization" for row in tp.values()):
        lines.append(
            f"Credentials: session cookies, except sidecar-bearer (an API client): `Authorization: Bearer` with "
            f"{bearer['tokens']} distinct RFC 9068 access tokens ({bearer['alg']}, typ at+jwt, aud "
            f"{bearer['audience']}) from bench/issuer.py, no cookie."
        )
    if tp:
        lines += [
            "",
            "| system | workers | req/s | (min-max) | p50 ms | p99 ms | non-2xx | socket errors | Redis cmds/s "
            "| other load |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, row in tp.items():
            lines.append(
                f"| {name} | {row['workers']} | {_num(row['rps'], 0)} | {_num(row['rps_min'], 0)}-"
                f"{_num(row['rps_max'], 0)} | {_num(row['p50_ms'])} | {_num(row['p99_ms'])} | {row['non2xx']} | "
                f"{row['socket_errors']} | {_num(row['redis_cmds_per_s'], 0)} | {_num(row.get('other_cpu_pct'), 0)} % |"
            )
        refused = non2xx(out)
        if refused:
            lines += [
                "",
                "**INVALID: non-2xx answers from "
                + ", ".join(f"{name} ({count:,})" for name, count in refused.items())
                + ". Every request carried a valid credential: those figures measure refusals, not authenticated "
                "requests.**",
            ]
    checks = out.get("ratios") or []
    if checks:
        lines += ["", "| check | value | target | met |", "|---|---:|---|:-:|"]
        for c in checks:
            mark = "-" if c["ok"] is None else ("yes" if c["ok"] else "**no**")
            lines.append(f"| {c['check']} | {c['value']} {c['unit']} | {c['target']} | {mark} |")
    lines += _comparison_lines(out)
    mem = out.get("redis_memory")
    if mem:
        lines += [
            "",
            f"Redis per sidecar session: MEMORY USAGE {mem.get('memory_usage_median')} B (median of "
            f"{mem.get('session_keys')} keys); raw tokens {mem.get('raw_tokens_bytes')} B + claims "
            f"{mem.get('raw_claims_bytes')} B = {mem.get('raw_bytes')} B; overhead {mem.get('overhead_bytes')} B "
            f"(record encoding {mem.get('record_overhead_bytes')} B, AES-GCM 28 B, Redis key/object "
            f"{mem.get('redis_key_overhead_bytes')} B). All sidecar keys incl. logout indexes: "
            f"{mem.get('all_in_bytes_per_session')} B per session.",
        ]
        ap = mem.get("apache_session")
        if ap and ap.get("keys"):
            lines.append(f"Apache + mod_auth_openidc session key: MEMORY USAGE {ap['memory_usage_median']} B (median).")
    rss = out.get("rss")
    if rss:
        logins_only = (rss["after_logins_kib"] - rss["before_kib"]) / 1024
        lines.append(
            f"Sidecar RSS ({rss['system']}, {rss['workers']} workers, all processes): "
            f"{rss['before_kib'] / 1024:.1f} -> {rss['after_use_kib'] / 1024:.1f} MiB for {rss['sessions']} more "
            f"live sessions (+{rss['growth_mib']} MiB, {rss['growth_bytes_per_session']} B per session; "
            f"+{logins_only:.1f} MiB after the logins alone, the rest once each session was used and cached); "
            f"the logins took {rss['login_seconds']} s."
        )
    mem_login = (out.get("logins") or {}).get("sidecar-memory-1w")
    if mem_login and mem_login.get("rss_growth_kib") is not None and mem_login.get("sessions"):
        per = mem_login["rss_growth_kib"] * 1024 / mem_login["sessions"]
        lines.append(
            f"Memory store: +{mem_login['rss_growth_kib'] / 1024:.1f} MiB RSS for its {mem_login['sessions']} "
            f"logins ({per:,.0f} B per session, first logins included)."
        )
    logins = out.get("logins") or {}
    if logins:
        parts = [
            f"{name} {row.get('rp_cpu_ms_per_callback')} ms ({row.get('logins_per_second')} logins/s end to end)"
            for name, row in logins.items()
        ]
        lines.append("CPU per login callback (token exchange + validation + session write): " + "; ".join(parts) + ".")
    inv = out.get("invalidation")
    if inv:
        for kind in ("sign_out", "backchannel"):
            if kind in inv:
                r = inv[kind]
                tail = " (still accepted when observation ended)" if r["still_accepted_at_end"] else ""
                since = [
                    v["last_accepted_since_request_ms"]
                    for v in r["replicas"].values()
                    if v["last_accepted_since_request_ms"] is not None
                ]
                window = f"; last acceptance {max(since)} ms after the request was sent" if since else ""
                lines.append(
                    f"Invalidation after {kind}: {r['latency_ms']} ms after the {r['trigger_ms']} ms request completed "
                    f"until every worker of both replicas refused the session{window} (poll resolution "
                    f"~{r['resolution_ms']} ms, cache_ttl {inv.get('cache_ttl')}){tail}."
                )
    prof = out.get("profile")
    if prof:
        lines.append("")
        for name, summary in prof.items():
            if not summary:
                continue
            frames = ", ".join(f"{f['frame']} {f['pct']}%" for f in summary["inclusive_proxy"][:10])
            lines.append(f"py-spy, one worker of {name} (share of busy samples, inclusive): {frames}")
    for note in out.get("notes") or []:
        lines.append(f"- note: {note}")
    if out.get("error"):
        lines.append(f"- ERROR: {out['error']}")
    return "\n".join(lines)


# Leaf frames of threads that only wait: the idle pool thread of ``asyncio.to_thread`` and the event
# loop's own poll (uvloop runs in C, so its wait shows as ``run_app``). py-spy cannot tell they are idle.
IDLE_LEAVES = ("_worker (concurrent/futures/thread.py:", "run_app (aiohttp/web.py:")


def collapse_profile(path: Path, top: int = 12) -> dict[str, Any]:
    """From ``py-spy record -f raw`` (collapsed stacks): the busiest innermost frames (self time) and the
    sidecar's own functions with everything they call (inclusive), each as a share of busy samples."""
    if not path.exists():
        return {}
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    busy = idle = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        if frames[-1].startswith(IDLE_LEAVES):
            idle += int(count)
            continue
        busy += int(count)
        leaf[frames[-1]] += int(count)
        # One count per function per stack, whatever the line: "handle (proxy/gate/handler.py)".
        for name in {f.rpartition(":")[0] + ")" for f in frames if "proxy/" in f}:
            inclusive[name] += int(count)

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"frame": f, "pct": round(100 * c / busy, 1)} for f, c in counter.most_common(top)] if busy else []

    entry = {"proxy (proxy/cli.py)", "main (proxy/cli.py)", "cmd_run (proxy/cli.py)", "_serve (proxy/cli.py)"}
    for name in list(inclusive):
        if name in entry or name.startswith(("run_workers", "cmd_run")):
            del inclusive[name]
    return {
        "busy_samples": busy,
        "idle_samples": idle,
        "self": share(leaf),
        "inclusive_proxy": share(inclusive),
    }
