"""Turn pytest-benchmark JSON into results, plots and the README tables.

    python benchmarks/report.py RAW.json [RAW2.json ...] [--name latest|timestamp]
                                [--no-readme] [--no-plots]

Writes benchmarks/results/<name>.json (every benchmark's median/mean/min/rounds and
extra_info, the targets, and the machine description from machine.py), PNG plots
benchmarks/results/<name>-<workload>-{time,bytes}.png (cost against size, one line per
system, log scales), and replaces the section of benchmarks/README.md between
<!-- BENCH:RESULTS:START --> and <!-- BENCH:RESULTS:END --> with the ratio and target tables.
That section carries a stamp (docs/stamp.py: the commit, and a digest of INPUTS, the files
that define the benchmarks); benchmarks/tests/test_report.py fails when they changed since.

Exit status 1 when a count target was missed (clusters, flushes, bytes, freed clusters,
undetected mutants: numbers the machine does not change), so `make bench-quick` and
`make test` fail on them; a missed timing ratio is reported and leaves the status 0.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "docs"))

import machine  # noqa: E402
import stamp  # noqa: E402

START, END = "<!-- BENCH:RESULTS:START -->", "<!-- BENCH:RESULTS:END -->"
ORDER = ["nvbox", "nvbox-encrypted", "qcow2", "sqlite", "files"]
MiB = 1 << 20
# The files that define what the results section reports (the suites, their helpers, the
# peers and this report); the section is stale when one of them changes.
INPUTS = ["benchmarks/benchlib.py", "benchmarks/conftest.py", "benchmarks/nvbox_store.py", "benchmarks/peers.py",
          "benchmarks/report.py", "benchmarks/test_bench_crypto.py", "benchmarks/test_bench_maint.py",
          "benchmarks/test_bench_many.py", "benchmarks/test_bench_open.py", "benchmarks/test_bench_putget.py",
          "benchmarks/test_bench_snapshot.py", "benchmarks/test_bench_targets_issue2.py",
          "benchmarks/test_bench_targets_issue3.py", "benchmarks/test_bench_targets_issue6.py",
          "benchmarks/test_bench_targets_issue8.py", "benchmarks/test_bench_update.py"]


def load(paths):
    """Rows of every file; a benchmark (or target) of a later file replaces the same one of
    an earlier file, so a quick run can be combined with a bigger targeted run."""
    rows, meta = [], {}
    for p in paths:
        with open(p) as f:
            raw = json.load(f)
        meta.setdefault("pytest_benchmark_version", raw.get("version"))
        meta.setdefault("datetime", raw.get("datetime"))
        for b in raw.get("benchmarks", []):
            e = dict(b.get("extra_info") or {})
            st = b["stats"]
            rows.append({"group": b.get("group"), "name": b["name"], "system": e.pop("system", None),
                         "workload": e.pop("workload", None), "size": e.pop("size", None),
                         "mode": e.pop("mode", None), "median": st["median"], "mean": st["mean"],
                         "min": st["min"], "max": st["max"], "rounds": st["rounds"], "extra": e})
    last = {}
    for i, r in enumerate(rows):
        last[r["name"]] = i
    rows = [r for i, r in enumerate(rows) if last[r["name"]] == i]
    seen = set()
    for r in reversed(rows):
        ts = []
        for t in r["extra"].get("targets", []):
            if t["name"] not in seen:
                seen.add(t["name"])
                ts.append(t)
        if "targets" in r["extra"]:
            r["extra"]["targets"] = ts
    rows += derived_targets(rows)
    return rows, meta


def derived_targets(rows):
    """Issue 8's cross-system target on the update workload: nvbox writes fewer bytes than
    plain files and at most 4x qcow2's in-place overwrite."""
    upd = {r["system"]: r["extra"].get("bytes_written") for r in rows if r["workload"] == "update"}
    nv = upd.get("nvbox")
    ts = []
    if nv and upd.get("files"):
        ts.append({"name": "issue8 update 4K in 1M: nvbox bytes written / plain files", "value": round(nv / upd["files"], 4),
                   "limit": 1, "op": "<", "unit": "", "pass": nv < upd["files"], "kind": "count",
                   "note": f"{nv:,.0f} vs {upd['files']:,.0f} bytes"})
    if nv and upd.get("qcow2"):
        ts.append({"name": "issue8 update 4K in 1M: nvbox bytes written / qcow2 in-place overwrite",
                   "value": round(nv / upd["qcow2"], 3), "limit": 4, "op": "<=", "unit": "",
                   "pass": nv <= 4 * upd["qcow2"], "kind": "count", "note": f"{nv:,.0f} vs {upd['qcow2']:,.0f} bytes"})
    if not ts:
        return []
    return [{"group": "derived", "name": "derived-issue8", "system": None, "workload": "derived", "size": None,
             "mode": None, "median": 0.0, "mean": 0.0, "min": 0.0, "max": 0.0, "rounds": 0,
             "extra": {"targets": ts}}]


def size_label(n):
    if n is None:
        return "-"
    for unit, mult in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1024)):
        if n >= mult and n % mult == 0:
            return f"{n // mult} {unit}"
    return f"{n} B" if n >= 64 else f"{n}"


def fmt_time(s):
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_num(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        if v == int(v):
            return f"{int(v):,}"
        return f"{v:,.1f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def net_time(r):
    """qcow2 snapshot times less process start-up (extra_info startup_seconds)."""
    st = r["extra"].get("startup_seconds")
    if r["system"] == "qcow2" and st and r["workload"] in ("snapshot_create", "snapshot_delete"):
        return max(r["median"] - st, 1e-9)
    return r["median"]


PEER_WORKLOADS = ["put", "get", "update", "first_write_after_snapshot", "put_many", "add_one", "open",
                  "snapshot_create", "snapshot_delete", "check", "compact",
                  "crypto_put", "crypto_get", "crypto_update"]


def table_by_workload(rows):
    """{workload: {size: {system: row}}} for the peer comparisons."""
    out = {}
    for r in rows:
        if r["workload"] in PEER_WORKLOADS and r["system"]:
            out.setdefault(r["workload"], {}).setdefault(r["size"], {})[r["system"]] = r
    return out


def ratio_tables(rows) -> str:
    tw = table_by_workload(rows)
    lines = []
    for wl in PEER_WORKLOADS:
        if wl not in tw:
            continue
        sizes = sorted(tw[wl], key=lambda s: (s is None, s or 0))
        systems = [s for s in ORDER if any(s in tw[wl][z] for z in sizes)]
        if not systems:
            continue
        base = "nvbox"
        lines.append(f"\n**{wl}** (median time; ratio = system / nvbox; bytes written and flushes per "
                     f"operation from the counting pass)\n")
        head = "| size | " + " | ".join(systems) + " | " + " | ".join(
            f"{s}/nvbox" for s in systems if s != base) + " | bytes written (" + ", ".join(systems) + \
            ") | flushes (" + ", ".join(systems) + ") | final file size, MiB (" + ", ".join(systems) + ") |"
        lines.append(head)
        lines.append("|" + "---|" * (1 + len(systems) + len([s for s in systems if s != base]) + 3))
        for z in sizes:
            cells = tw[wl][z]
            times = {s: net_time(cells[s]) for s in systems if s in cells}
            row = [size_label(z) if wl not in ("put_many", "add_one", "open") else f"{z:,} blobs"]
            row += [fmt_time(times.get(s)) for s in systems]
            for s in systems:
                if s == base:
                    continue
                if s in times and base in times and times[base] > 0:
                    row.append(f"{times[s] / times[base]:.2f}")
                else:
                    row.append("-")
            row.append(", ".join(fmt_num(cells[s]["extra"].get("bytes_written")) if s in cells else "-"
                                 for s in systems))
            row.append(", ".join(fmt_num(cells[s]["extra"].get("flushes")) if s in cells else "-"
                                 for s in systems))
            row.append(", ".join(f"{cells[s]['extra']['file_size'] / MiB:.2f}"
                                 if s in cells and cells[s]["extra"].get("file_size") is not None else "-"
                                 for s in systems))
            lines.append("| " + " | ".join(row) + " |")
        if wl in ("snapshot_create", "snapshot_delete") and "qcow2" in systems:
            lines.append("\nqcow2 times here are `qemu-img snapshot` less its start-up "
                         "(`qemu-img info` on the same image).")
    return "\n".join(lines)


def kind(t) -> str:
    """'count' or 'timing' (results made before targets had kinds count as timing)."""
    return t.get("kind", "timing")


def targets_table(rows) -> str:
    lines = ["| target | kind | measured | limit | result |", "|---|---|---|---|---|"]
    n = 0
    for r in rows:
        for t in r["extra"].get("targets", []):
            v = t["value"]
            v = f"{v:.4g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)
            lim = t["limit"]
            lim = f"{lim:.4g}" if isinstance(lim, float) else f"{lim:,}" if isinstance(lim, int) else str(lim)
            note = f" ({t['note']})" if t.get("note") else ""
            lines.append(f"| {t['name']}{note} | {kind(t)} | {v} {t.get('unit', '')} | {t['op']} {lim} | "
                         f"{'pass' if t['pass'] else '**MISS**'} |")
            n += 1
    return "\n".join(lines) if n else ""


def issue3_table(rows) -> str:
    summ = [r for r in rows if r["workload"] == "issue3_summary"]
    if not summ:
        return ""
    curves = summ[-1]["extra"].get("curves", [])
    lines = ["| allocated | nvbox create (cold handle) | nvbox create (warm handle) | nvbox clusters written | "
             "qemu-img snapshot -c | qemu-img start-up | qcow2 net | nvbox / qcow2 net | "
             "first write after snapshot (clusters) |", "|---|---|---|---|---|---|---|---|---|"]
    for c in curves:
        lines.append("| " + " | ".join([
            size_label(c["size"]), fmt_time(c["nvbox_seconds"]), fmt_time(c.get("nvbox_warm_seconds")),
            ", ".join(map(str, c["nvbox_clusters"])), fmt_time(c.get("qcow2_seconds")),
            fmt_time(c.get("qcow2_startup")), fmt_time(c.get("qcow2_net")),
            f"{c['ratio_nvbox_over_qcow2_net']:.3f}" if c.get("ratio_nvbox_over_qcow2_net") else "-",
            str(c["first_write_clusters"])]) + " |")
    dels = summ[-1]["extra"].get("deletes", [])
    if dels:
        lines += ["", "| changed after the snapshot | clusters only the snapshot held | clusters freed "
                  "(incl. old metadata) | delete time | per freed cluster |", "|---|---|---|---|---|"]
        for d in dels:
            lines.append(f"| {size_label(d['changed'])} | {d['exclusive']:,} | {d['freed']:,} | "
                         f"{fmt_time(d['seconds'])} | {d['seconds'] / max(1, d['freed']) * 1e6:.1f} µs |")
    return "\n".join(lines)


def plots(rows, outdir, name) -> list[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots", file=sys.stderr)
        return []
    made = []
    tw = table_by_workload(rows)
    for wl, bysize in tw.items():
        sizes = sorted(z for z in bysize if z)
        if len(sizes) < 2:
            continue
        for metric, label in (("time", "median time (s)"), ("bytes", "bytes written per operation")):
            fig, ax = plt.subplots(figsize=(6.4, 4.2))
            drew = False
            for sysname in ORDER:
                xs, ys = [], []
                for z in sizes:
                    r = bysize[z].get(sysname)
                    if r is None:
                        continue
                    y = net_time(r) if metric == "time" else r["extra"].get("bytes_written")
                    if y is None or y <= 0:
                        continue
                    xs.append(z)
                    ys.append(y)
                if xs:
                    ax.plot(xs, ys, marker="o", label=sysname)
                    drew = True
            if not drew:
                plt.close(fig)
                continue
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("blob count" if wl in ("put_many", "add_one", "open") else "size (bytes)")
            ax.set_ylabel(label)
            ax.set_title(f"{wl}: {label}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
            fig.tight_layout()
            fn = os.path.join(outdir, f"{name}-{wl}-{metric}.png")
            fig.savefig(fn, dpi=90)
            plt.close(fig)
            made.append(fn)
    # issue 3 curves
    summ = [r for r in rows if r["workload"] == "issue3_summary"]
    if summ and len(summ[-1]["extra"].get("curves", [])) >= 2:
        c = summ[-1]["extra"]["curves"]
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        xs = [x["size"] for x in c]
        ax.plot(xs, [x["nvbox_seconds"] for x in c], marker="o", label="nvbox (cold handle)")
        ax.plot(xs, [x["nvbox_warm_seconds"] for x in c], marker="o", label="nvbox (warm handle)")
        if all(x.get("qcow2_net") for x in c):
            ax.plot(xs, [x["qcow2_net"] for x in c], marker="o", label="qemu-img snapshot -c less start-up")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("allocated blob data (bytes)")
        ax.set_ylabel("snapshot create (s)")
        ax.set_title("issue 3: snapshot create, 4 KiB clusters")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fn = os.path.join(outdir, f"{name}-issue3-snapshot-create.png")
        fig.savefig(fn, dpi=90)
        plt.close(fig)
        made.append(fn)
    return made


def machine_line(m) -> str:
    fs = m.get("filesystem", {})
    return (f"{m.get('cpu_model')}, {m.get('cores_usable')} usable cores, "
            f"{(m.get('ram_bytes') or 0) / (1 << 30):.0f} GiB RAM, {m.get('os')}, kernel {m.get('kernel')}, "
            f"Python {m.get('python')}, SQLite {m.get('sqlite')}, {m.get('qemu_img') or 'no qemu-img'}, "
            f"{fs.get('type')} on {fs.get('device')} ({fs.get('options')})")


def update_readme(readme, rows, m, name, made) -> None:
    with open(readme) as f:
        text = f.read()
    if START not in text or END not in text:
        text = text.rstrip() + f"\n\n## Results\n\n{START}\n{END}\n"
    mode = sorted({r["mode"] for r in rows if r["mode"]})
    parts = [stamp.stamp(INPUTS), "",
             f"Generated by `benchmarks/report.py` from run `{name}` (mode {', '.join(mode) or '?'}, "
             f"{_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}) of commit {stamp.commit_of(INPUTS)}.", "",
             f"Machine: {machine_line(m)}.", ""]
    tt = targets_table(rows)
    if tt:
        parts += ["### Targets (issues 2, 3, 6, 8)", "", tt, ""]
    i3 = issue3_table(rows)
    if i3:
        parts += ["### Issue 3: snapshot cost against allocated size (4 KiB clusters)", "", i3, ""]
    parts += ["### Peer comparison (issue 8)", ratio_tables(rows), ""]
    if made:
        parts += ["Plots: " + ", ".join(f"[{os.path.basename(p)}](results/{os.path.basename(p)})" for p in made), ""]
    block = "\n".join(parts)
    text = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _m: f"{START}\n{block}\n{END}", text,
                  flags=re.S)
    with open(readme, "w") as f:
        f.write(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw", nargs="+", help="pytest-benchmark JSON file(s) (--benchmark-json)")
    ap.add_argument("--name", default="latest", help="'latest' (default), 'timestamp', or any name")
    ap.add_argument("--outdir", default=os.path.join(HERE, "results"))
    ap.add_argument("--readme", default=os.path.join(HERE, "README.md"))
    ap.add_argument("--no-readme", action="store_true")
    ap.add_argument("--no-plots", action="store_true")
    a = ap.parse_args(argv)
    name = _dt.datetime.now().strftime("%Y%m%d-%H%M%S") if a.name == "timestamp" else a.name
    rows, meta = load([p for p in a.raw if os.path.exists(p)])
    if not rows:
        print("no benchmarks in " + ", ".join(a.raw), file=sys.stderr)
        return 1
    os.makedirs(a.outdir, exist_ok=True)
    m = machine.describe(os.environ.get("NVBOX_BENCH_DIR") or "/tmp")
    targets = [t for r in rows for t in r["extra"].get("targets", [])]
    with open(os.path.join(a.outdir, f"{name}.json"), "w") as f:
        json.dump({"name": name, "machine": m, "meta": meta, "benchmarks": rows, "targets": targets}, f,
                  indent=1, default=str)
    made = [] if a.no_plots else plots(rows, a.outdir, name)
    if not a.no_readme:
        update_readme(a.readme, rows, m, name, made)
    miss = [t for t in targets if not t["pass"]]
    print(f"{len(rows)} benchmarks, {len(targets)} targets ({len(miss)} missed) -> "
          f"{os.path.join(a.outdir, name + '.json')}, {len(made)} plots")
    for t in miss:
        print(f"  MISS ({kind(t)}) {t['name']}: {t['value']} (target {t['op']} {t['limit']})")
    return 1 if any(kind(t) == "count" for t in miss) else 0


if __name__ == "__main__":
    sys.exit(main())
