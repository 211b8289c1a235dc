"""Summarize a pytest-benchmark JSON file as the targets' figures.

Usage: python benches/report.py BENCH.json [--plots DIR]

Prints one markdown table row per target with the measured value, the
baseline measured in the same run, the ratio and whether the target is
met. With --plots, it also writes the routing and batch-size plots as
PNG files.
"""

import argparse
import json
import pathlib
import sys


def _by_name(data):
    return {b["name"]: b for b in data["benchmarks"]}


def _median(bench):
    return bench["stats"]["median"]


def _rows(benches):
    rows = []

    def get(name):
        return benches.get(name)

    raw = get("test_raw_lmdb_puts")
    store = get("test_store_commit_with_subscriber")
    if raw and store:
        ratio = _median(raw) / _median(store)
        rows.append(("Commit 100k changes + subscriber vs raw lmdb puts",
                     f"{100_000 / _median(store):,.0f} changes/s",
                     f"{100_000 / _median(raw):,.0f} puts/s",
                     f"{ratio:.2f} of raw", ratio >= 0.5))

    low = get("test_prefix_index_routing[10]")
    high = get("test_prefix_index_routing[10000]")
    scan = get("test_linear_scan_routing[10000]")
    if low and high:
        growth = _median(high) / _median(low)
        rows.append(("Routing 1,000 keys: 10,000 vs 10 subscriptions",
                     f"{_median(high) * 1e3:.2f} ms at 10,000",
                     f"{_median(low) * 1e3:.2f} ms at 10",
                     f"{growth:.2f}x", growth <= 2.0))
    if high and scan:
        speedup = _median(scan) / _median(high)
        rows.append(("Routing at 10,000 vs original's linear scan",
                     f"{_median(high) * 1e3:.2f} ms",
                     f"{_median(scan) * 1e3:.1f} ms",
                     f"{speedup:,.0f}x faster", speedup >= 100))

    spread_low = get("test_prefix_index_fanout[10]")
    spread_high = get("test_prefix_index_fanout[10000]")
    if spread_low and spread_high:
        growth = _median(spread_high) / _median(spread_low)
        rows.append(("Fan-out: keys spread over all subscriptions "
                     "(not a target)",
                     f"{_median(spread_high) * 1e3:.2f} ms at 10,000",
                     f"{_median(spread_low) * 1e3:.2f} ms at 10",
                     f"{growth:.2f}x", None))

    delivery = get("test_store_delivery_queue")
    floor = get("test_queue_only_baseline")
    if delivery:
        rate = delivery["extra_info"]["changes"] / _median(delivery)
        rows.append(("Delivery, commits of 100 changes, queue.Queue",
                     f"{rate:,.0f} changes/s",
                     f"{1e6 / _median(floor):,.0f} changes/s queue only"
                     if floor else "-",
                     "-", rate >= 1_000_000))

    resync = get("test_store_resync_iteration")
    cursor = get("test_raw_lmdb_cursor_baseline")
    if resync:
        rate = 1_000_000 / _median(resync)
        rows.append(("Resync iteration of 1,000,000 keys",
                     f"{rate:,.0f} keys/s",
                     f"{1e6 / _median(cursor):,.0f} keys/s raw cursor"
                     if cursor else "-",
                     "-", rate >= 2_000_000))

    one = get("test_durable_one_put_commits[1]")
    eight = get("test_durable_one_put_commits[8]")
    if one and eight:
        rate1 = one["extra_info"]["commits"] / _median(one)
        rate8 = eight["extra_info"]["commits"] / _median(eight)
        rows.append(("Durable one-put commits, 8 threads vs 1",
                     f"{rate8:,.0f} commits/s with 8",
                     f"{rate1:,.0f} commits/s with 1",
                     f"{rate8 / rate1:.1f}x", rate8 / rate1 >= 5))

    latency = get("test_store_watch_latency")
    wake = get("test_datagram_wakeup_baseline")
    if latency:
        info = latency["extra_info"]
        met = info["median_us"] <= 200 and info["p99_us"] <= 2000
        base = wake["extra_info"] if wake else None
        rows.append(("Cross-process watch latency (median / p99)",
                     f"{info['median_us']:.0f} / {info['p99_us']:.0f} us",
                     f"{base['median_us']:.0f} / {base['p99_us']:.0f} us "
                     "datagram" if base else "-",
                     "-", met))

    memory = get("test_watcher_process_memory")
    if memory:
        info = memory["extra_info"]
        rows.append(("Watcher process over 1,000,000 keys, peak RSS",
                     f"{info['peak_rss_mib']:.0f} MiB",
                     f"{info['bare_import_rss_mib']:.0f} MiB bare import",
                     "-", info["peak_rss_mib"] < 100))

    etcd = get("test_etcd_puts_with_watcher")
    for mode in ("synced", "not-synced"):
        embedded = get(f"test_embedded_puts_with_watcher[{mode}]")
        if etcd and embedded:
            ratio = _median(etcd) / _median(embedded)
            rows.append((f"10,000 puts with a watcher: embedded ({mode}) "
                         "vs etcd",
                         f"{10_000 / _median(embedded):,.0f} puts/s",
                         f"{10_000 / _median(etcd):,.0f} puts/s etcd",
                         f"{ratio:.1f}x", ratio >= 50))
    return rows


def _plot(benches, directory):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    sizes = [10, 100, 1_000, 10_000]
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, pattern in (("radix tree index (datasync)",
                            "test_prefix_index_routing[{}]"),
                           ("linear scan (original's algorithm)",
                            "test_linear_scan_routing[{}]")):
        points = [(n, _median(benches[pattern.format(n)]) * 1e3)
                  for n in sizes if pattern.format(n) in benches]
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
    ax.set(xscale="log", yscale="log", xlabel="subscriptions (2 prefixes)",
           ylabel="ms per commit of 1,000 keys",
           title="Routing time against subscriptions")
    ax.legend()
    fig.tight_layout()
    fig.savefig(directory / "routing.png", dpi=120)

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, pattern in (("raw lmdb", "test_raw_lmdb_batches[{}]"),
                           ("datasync store + subscriber",
                            "test_store_batches[{}]")):
        points = [(b, 10_000 / _median(benches[pattern.format(b)]))
                  for b in (1, 10, 100, 1_000, 10_000)
                  if pattern.format(b) in benches]
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
    ax.set(xscale="log", yscale="log", xlabel="changes per transaction",
           ylabel="changes per second",
           title="Commit throughput against batch size (no sync)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(directory / "batch.png", dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=pathlib.Path,
                        help="file written by pytest --benchmark-json")
    parser.add_argument("--plots", type=pathlib.Path,
                        help="directory to write routing.png and batch.png")
    args = parser.parse_args(argv)
    data = json.loads(args.json.read_text())
    benches = _by_name(data)
    print("| target | measured | baseline (same run) | ratio | met |")
    print("| --- | --- | --- | --- | --- |")
    for name, value, base, ratio, met in _rows(benches):
        if met is None:
            verdict = "-"
        elif met:
            verdict = "yes"
        else:
            verdict = "no"
        print(f"| {name} | {value} | {base} | {ratio} | {verdict} |")
    if args.plots:
        _plot(benches, args.plots)
    return 0


if __name__ == "__main__":
    sys.exit(main())
