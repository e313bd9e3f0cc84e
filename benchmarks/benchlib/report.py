"""Medians (min–max) of the runs, side by side per section, written as Markdown and JSON."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

LIBS = ('cqrs_celery', 'django-cqrs')
#: Units where a smaller number is better.
LOWER_IS_BETTER = {'ms', 'MiB'}
#: Units that describe rather than score: no better/worse.
NEUTRAL = {'bytes', 'messages'}
SCENARIO_ORDER = ['-', 'A', 'B', 'C', 'D', 'E', 'F', 'G']  # '-': a run that failed before its scenarios
#: The ceiling shown next to each scenario (the full list is in the section's ceiling table).
_APPLY = ['replica insert, one transaction per row', 'kombu consume + ack']
_MASTER = 'master save loop, replication off'
#: The same loop saving the replicated model with ``CQRS_PRODUCE = False`` (its columns and save, no events).
_QUIET = 'master save loop, CQRS_PRODUCE = False'
_BULK = 'replica bulk_create'
#: The plain model's save loop run as A's master runs: a fresh process, N creates, right after A.
PLAIN_LOOP = "master save loop like A's (fresh process, N creates), replication off"
#: The same, saving the replicated model with ``CQRS_PRODUCE = False``, run right after it.
QUIET_LOOP = "master save loop like A's (fresh process, N creates), CQRS_PRODUCE = False"
SCENARIO_CEILINGS = {
    'creates end to end': [_MASTER, _QUIET, PLAIN_LOOP, QUIET_LOOP, *_APPLY],
    'updates end to end': [_MASTER, _QUIET, *_APPLY],
    'deletes end to end': _APPLY,
    'creates end to end, publisher process': [_MASTER, _QUIET, PLAIN_LOOP, QUIET_LOOP, *_APPLY],
    'cqrs_sync into empty replica': [*_APPLY, _BULK], 'cqrs_sync, first to last row visible': [*_APPLY, _BULK],
    'backlog drain': _APPLY, 'backlog drain, one message per change': _APPLY,
}
SHORT = {'replica insert, one transaction per row': 'db', 'kombu consume + ack': 'broker', _MASTER: 'master',
         _QUIET: 'master, CQRS_PRODUCE off', _BULK: 'db bulk', PLAIN_LOOP: "master loop like A's",
         QUIET_LOOP: "master loop like A's, CQRS_PRODUCE off"}


def summarize(records: list[dict]) -> list[dict]:
    """One row per section, scenario, metric, concurrency and variant: median, min, max, runs."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for record in records:
        key = (record['broker'], record['db'], record['scenario'], record['metric'], record['concurrency'],
               record['variant'], record['unit'])
        groups[key].append(record)
    rows = []
    for (broker, db, scenario, metric, concurrency, variant, unit), items in groups.items():
        values = [r['value'] for r in items if r['value'] is not None]
        notes = sorted({r['note'] for r in items if r['note']})
        rows.append({
            'broker': broker, 'db': db, 'scenario': scenario, 'metric': metric, 'concurrency': concurrency,
            'variant': variant, 'unit': unit, 'runs': len(values), 'attempts': len(items),
            'median': statistics.median(values) if values else None,
            'min': min(values) if values else None, 'max': max(values) if values else None, 'notes': notes,
        })
    return rows


def _number(value: float, unit: str) -> str:
    if unit == 'ms':
        return f'{value:.2f}' if abs(value) < 10 else f'{value:.1f}'
    if unit == '%':
        return f'{value:.1f} %'
    return f'{value:.0f}' if abs(value) >= 10 else f'{value:.1f}'


def cell(row: dict | None) -> str:
    if row is None:
        return '–'
    if row['median'] is None:
        return '; '.join(row['notes']) or 'failed'
    text = _number(row['median'], row['unit'])
    if row['runs'] > 1:
        text += f' ({_number(row["min"], row["unit"])}–{_number(row["max"], row["unit"])})'
    if row['runs'] < row['attempts'] or row['notes']:
        text += ' ⚠ ' + '; '.join(row['notes'] or [f'{row["attempts"] - row["runs"]} run(s) failed'])
    return text


def ratio(ours: dict | None, theirs: dict | None) -> str:
    if not ours or not theirs or ours['median'] is None or theirs['median'] is None or theirs['median'] == 0:
        return '–'
    value = ours['median'] / theirs['median']
    if ours['unit'] in NEUTRAL:
        return f'{value:.2f}×'
    if ours['unit'] in LOWER_IS_BETTER:
        return f'{value:.2f}× ({"better" if value < 1 else "worse" if value > 1 else "same"})'
    return f'{value:.2f}× ({"better" if value > 1 else "worse" if value < 1 else "same"})'


def _suffix(variant: str) -> str:
    """' (outbox off)' of 'cqrs_celery (outbox off)': the variant without the library's name."""
    for lib in LIBS:
        if variant.startswith(lib):
            return variant[len(lib):]
    return variant


def _django_variant(variant: str, available: set[str]) -> str:
    """The django-cqrs figure an cqrs_celery variant is compared with (outbox off has no twin)."""
    suffix = variant[len('cqrs_celery'):]
    twin = f'django-cqrs{suffix}'
    return twin if twin in available else 'django-cqrs'


def section_markdown(rows: list[dict]) -> list[str]:
    index = {(r['scenario'], r['metric'], r['concurrency'], r['variant']): r for r in rows}
    variants = {r['variant'] for r in rows}
    # A ceiling measured by both libraries' projects is shown as cqrs_celery's project measured it.
    ceilings = {r['metric']: r for r in sorted((r for r in rows if r['scenario'] == 'ceiling'),
                                                key=lambda r: r['variant'] == 'cqrs_celery')}
    lines = ['| scenario | c | cqrs_celery | django-cqrs | cqrs_celery ÷ django-cqrs | ceiling, same run |',
             '|---|---|---|---|---|---|']
    first_seen = {metric: i for i, metric in reversed(list(enumerate(r['metric'] for r in rows)))}
    keys = sorted({(r['scenario'], r['metric'], r['concurrency'], _suffix(r['variant']), r['unit']) for r in rows
                   if r['scenario'] in SCENARIO_ORDER and r['variant'].startswith(LIBS)},
                  key=lambda k: (SCENARIO_ORDER.index(k[0]), k[2] or 0, first_seen[k[1]], k[3]))
    for scenario, metric, concurrency, suffix, unit in keys:
        ours = index.get((scenario, metric, concurrency, f'cqrs_celery{suffix}'))
        theirs = index.get((scenario, metric, concurrency, _django_variant(f'cqrs_celery{suffix}', variants)))
        label = f'{scenario} {metric}{suffix}, {unit}' if scenario != '-' else metric
        ceiling = ', '.join(f'{SHORT[name]} {_number(ceilings[name]["median"], ceilings[name]["unit"])}'
                            for name in SCENARIO_CEILINGS.get(metric, [])
                            if name in ceilings and ceilings[name]['median'] is not None)
        if scenario == 'F' and 'create' in metric:
            plain = ceilings.get(_MASTER)
            if plain and plain['median']:
                ceiling = f'plain save {1000 / plain["median"]:.2f} ms'
        lines.append(f'| {label} | {concurrency or "–"} | {cell(ours)} | {cell(theirs)} | {ratio(ours, theirs)} '
                     f'| {ceiling} |')
    lines += ['', '| ceiling | measured with | median (min–max) |', '|---|---|---|']
    for row in sorted((r for r in rows if r['scenario'] == 'ceiling'), key=lambda r: (r['metric'], r['variant'])):
        lines.append(f'| {row["metric"]}, {row["unit"]} | {row["variant"]} | {cell(row)} |')
    return lines


def write(records: list[dict], meta: dict, out: Path) -> tuple[Path, Path]:
    rows = summarize(records)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out.with_suffix('.json'), out.with_suffix('.md')
    json_path.write_text(json.dumps({'meta': meta, 'summary': rows, 'records': records}, indent=1))
    lines = [
        '# cqrs_celery and django-cqrs 3.1.0, side by side',
        '',
        f'`{meta["command"]}` — {meta["started"]}, {meta["duration_min"]:.1f} min; '
        f'{meta["machine"]}; cqrs_celery at {meta["git"]}.',
        f'N = {meta["n"]} rows per step, {meta["runs"]} run(s) per figure: median (min–max); '
        f'bench row: {meta.get("shape", "item")}. '
        '"better"/"worse" in the ratio column is from cqrs_celery\'s side. See benchmarks/README.md '
        'for what each scenario measures.',
    ]
    sections = sorted({(r['broker'], r['db']) for r in rows if r['broker'] and r['db']})
    for broker, db in sections:
        lines += ['', f'## {broker} · {db}', '']
        lines += section_markdown([r for r in rows if (r['broker'], r['db']) == (broker, db)
                                   or (r['scenario'] == 'ceiling' and r['broker'] == broker and r['db'] is None)
                                   or (r['scenario'] == 'ceiling' and r['db'] == db and r['broker'] is None)])
    md_path.write_text('\n'.join(lines) + '\n')
    return md_path, json_path
