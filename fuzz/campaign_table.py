#!/usr/bin/env python3
"""Writes fuzz/README.md's campaign tables from fuzz/campaign/*.tsv (fuzz/campaign.sh calls it).

One table per results file (label), between `<!-- campaign:LABEL -->` and `<!-- /campaign:LABEL -->`
(added at the end of the README when missing), and, when both `before` and `campaign` exist, a
comparison of edges and line coverage between them under `<!-- campaign:compare -->`.
"""

import csv
import sys
from pathlib import Path


def load(path):
    with open(path, newline="") as f:
        return {row["target"]: row for row in csv.DictReader(f, delimiter="\t")}


def pct(pair):
    """'covered/count' as a percentage with the counts, or '-'."""
    if not pair or pair == "-" or "/" not in pair:
        return "-"
    covered, count = (int(x) for x in pair.split("/"))
    if count == 0:
        return "-"
    return f"{100 * covered / count:.1f} % ({covered}/{count})"


def crashes(field):
    if not field or field == "-":
        return "none"
    return ", ".join(f"`{c}`" for c in field.split())


def results_table(rows):
    out = [
        "| target | date | time | execs | exec/s | corpus | edges | crate lines | focus lines | crashes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in sorted(rows):
        r = rows[name]
        seconds = int(r["seconds"])
        execs = int(r["execs"])
        rate = execs / seconds if seconds else 0
        kib = int(r["corpus_bytes"]) / 1024
        out.append(
            f"| {name} | {r['date']} | {seconds} s | {execs:,} | {rate:,.0f} | "
            f"{r['corpus_files']} ({kib:,.0f} KiB) | {r['edges']} | {pct(r['crate_lines'])} | "
            f"{pct(r['focus_lines'])} | {crashes(r['crashes'])} |"
        )
    return out


def compare_table(before, after):
    out = [
        "| target | edges before | edges after | focus lines before | focus lines after | crate lines before | crate lines after |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in sorted(set(before) | set(after)):
        b = before.get(name, {})
        a = after.get(name, {})
        out.append(
            f"| {name} | {b.get('edges', '-')} | {a.get('edges', '-')} | "
            f"{pct(b.get('focus_lines'))} | {pct(a.get('focus_lines'))} | "
            f"{pct(b.get('crate_lines'))} | {pct(a.get('crate_lines'))} |"
        )
    return out


def replace_section(text, name, lines):
    start, end = f"<!-- campaign:{name} -->", f"<!-- /campaign:{name} -->"
    block = "\n".join([start, *lines, end])
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        return head + block + tail
    return text.rstrip("\n") + f"\n\n### Results: {name}\n\n" + block + "\n"


def main():
    fuzz_dir = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent)
    readme = fuzz_dir / "README.md"
    text = readme.read_text() if readme.exists() else "# Fuzzing\n"
    results = {p.stem: load(p) for p in sorted((fuzz_dir / "campaign").glob("*.tsv"))}
    for label, rows in results.items():
        text = replace_section(text, label, results_table(rows))
    if "before" in results and "campaign" in results:
        text = replace_section(text, "compare", compare_table(results["before"], results["campaign"]))
    readme.write_text(text)


if __name__ == "__main__":
    main()
