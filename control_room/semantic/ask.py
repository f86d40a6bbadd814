"""A question in English -> a metric query, deterministically (no model): the metric and the
dimensions by exact, synonym and fuzzy (rapidfuzz) match, time expressions, filters on known
dimension values, top-N, comparisons of two periods or two members ("2026 vs 2025"). It
answers `answer` with one reading, `clarify` with the candidate readings when it is not
confident or two readings are close, `refuse` when the question is outside the semantic layer
(docs/ask.md).
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from rapidfuzz import fuzz, process

from control_room.semantic.model import Grain, Layer
from control_room.semantic.query import Compare, Filter, MetricQuery, Side

__all__ = ["THRESHOLD", "Parsed", "Reading", "parse_question"]

THRESHOLD = 0.75
"""Confidence below which a reading is not answered but offered (clarify)."""
CLOSE = 0.05
"""Two readings whose confidences are this close are both offered (clarify)."""
FUZZY_CUTOFF = 88.0
UNKNOWN_WORD_PENALTY = 0.3

Status = Literal["answer", "clarify", "refuse"]

_STOP_TEXT = """
a an the of for in on at to by per from with and or me us our my we i you your show give tell
list what whats what's was were is are be been how much many which who whose please total
overall all get find display report see view value values number count amount amounts do did
does have has had this that these those it its there their across each every over during
between than then so as about any some can could would should will current currently figure
figures data number numbers sum breakdown broken down split grouped group trend trends
evolution having most highest largest biggest best top lowest smallest least worst bottom up
where when still so far year month quarter week day years months quarters weeks days
make made earn earned generate generated bring brought sold selling
"""
_STOP = frozenset(_STOP_TEXT.split())

_REFUSE_WORDS_TEXT = """
forecast forecasts forecasting predict predicted prediction predictions projection projected
projections budget budgets profit profits profitability margin margins cost costs expense
expenses salary salaries payroll employee employees headcount staff weather churn why inventory
stock warehouse warehouses tax taxes vat delete drop insert update truncate password passwords
token tokens supplier suppliers vendor vendors purchase purchases refund refunds discount
discounts shipping shipment shipments delivery deliveries lead leads opportunity opportunities
pipeline campaign campaigns marketing website visitors traffic
"""
_REFUSE_WORDS = frozenset(_REFUSE_WORDS_TEXT.split())

_MONTHS = {name.lower(): index for index, name in enumerate(calendar.month_name) if name}
_MONTHS.update({name.lower(): index for index, name in enumerate(calendar.month_abbr) if name})
_MONTHS["sept"] = 9
_GRAIN_WORDS: dict[str, Grain] = {
    "daily": "day", "weekly": "week", "monthly": "month", "quarterly": "quarter",
    "yearly": "year", "annually": "year", "annual": "year",
}


@dataclass(frozen=True)
class Reading:
    """One way of reading the question: a metric query, how sure, and why."""

    query: MetricQuery
    confidence: float
    why: str


@dataclass
class Parsed:
    status: Status
    readings: list[Reading] = field(default_factory=list)
    reason: str | None = None

    @property
    def query(self) -> MetricQuery | None:
        return self.readings[0].query if self.status == "answer" and self.readings else None


@dataclass
class _Text:
    """The question's words, with the spans already understood masked out."""

    words: list[str]
    used: list[bool]

    def text(self) -> str:
        return " ".join(self.words)

    def free(self) -> list[str]:
        return [w for w, u in zip(self.words, self.used, strict=True) if not u]

    def find(self, phrase: Sequence[str]) -> list[int]:
        n = len(phrase)
        return [i for i in range(len(self.words) - n + 1)
                if not any(self.used[i:i + n]) and self.words[i:i + n] == list(phrase)]

    def take(self, start: int, n: int) -> None:
        for i in range(start, start + n):
            self.used[i] = True


def _words(text: str) -> list[str]:
    text = text.lower().replace("\u2019", "'")
    text = re.sub(r"(\d)%", r"\1 %", text)
    return re.findall(r"[a-z0-9à-ÿ][a-z0-9à-ÿ'&.\-]*[a-z0-9à-ÿ]|[a-z0-9à-ÿ]", text)


def _month_range(year: int, month: int) -> tuple[dt.date, dt.date]:
    end = dt.date(year + (month == 12), month % 12 + 1, 1)
    return dt.date(year, month, 1), end


def _quarter_range(year: int, quarter: int) -> tuple[dt.date, dt.date]:
    start = dt.date(year, 3 * (quarter - 1) + 1, 1)
    end = dt.date(year + (quarter == 4), (3 * quarter) % 12 + 1, 1)
    return start, end


@dataclass
class _Time:
    start: dt.date | None = None
    end: dt.date | None = None
    grain: Grain | None = None
    future: bool = False
    said: list[str] = field(default_factory=list)
    ranges: list[tuple[int, str, dt.date, dt.date]] = field(default_factory=list)
    """Every range said: (word position, kind, start, end), for comparisons."""


def _time(text: _Text, today: dt.date) -> _Time:
    """Time expressions: ranges (last quarter, in March, YTD, in 2026, last 30 days, Q1 2026,
    this month...) and grains (by month, monthly); their words are masked."""
    found = _Time()
    joined = text.text()
    tomorrow = today + dt.timedelta(days=1)

    def mask(match: re.Match[str]) -> None:
        # word positions of the match in the joined text
        before = joined[:match.start()].split()
        count = len(match.group(0).split())
        text.take(len(before), count)
        found.said.append(match.group(0))

    position = [0]
    kind_said = [""]

    def set_range(start: dt.date, end: dt.date) -> None:
        found.start, found.end = start, end
        found.ranges.append((position[0], kind_said[0], start, end))
        if start > today:
            found.future = True

    patterns: list[tuple[str, str]] = [
        ("ytd", r"\b(?:year to date|ytd|so far this year)\b"),
        ("qtd", r"\b(?:quarter to date|qtd|so far this quarter)\b"),
        ("mtd", r"\b(?:month to date|mtd|so far this month)\b"),
        ("next", r"\b(?:next|coming|upcoming)\s+(?:\d+\s+)?(?:day|week|month|quarter|year)s?\b"),
        ("lastn", r"\b(?:last|past|previous|prior|preceding|trailing)\s+(\d+)\s+"
         r"(day|week|month)s?\b"),
        ("lastq", r"\b(?:last|previous|past|prior)\s+quarter\b"),
        ("thisq", r"\b(?:this|current)\s+quarter\b"),
        ("lastm", r"\b(?:last|previous|past|prior)\s+month\b"),
        ("thism", r"\b(?:this|current)\s+month\b"),
        ("lasty", r"\b(?:last|previous|past|prior)\s+year\b"),
        ("thisy", r"\b(?:this|current)\s+year\b"),
        ("quarter", r"\b(?:in\s+|during\s+|for\s+)?q([1-4])(?:\s+(?:of\s+)?(20\d\d))?\b"),
        ("month", r"\b(?:(?:in|during|for|of|since)\s+)?(" + "|".join(
            sorted((m for m in _MONTHS if m != "may"), key=len, reverse=True))
         + r")(?:\s+(?:of\s+)?(20\d\d))?\b"),
        ("may", r"\b(?:(?:in|during|for|of|since)\s+may(?:\s+(20\d\d))?|may\s+(20\d\d))\b"),
        ("year", r"\b(?:(?:in|during|for|of|since)\s+)?(20\d\d)\b"),
    ]
    for kind, pattern in patterns:
        for match in re.finditer(pattern, joined):
            start_word = len(joined[:match.start()].split())
            if any(text.used[start_word:start_word + len(match.group(0).split())]):
                continue
            since = match.group(0).startswith("since ")
            position[0], kind_said[0] = start_word, kind
            if kind == "ytd":
                set_range(dt.date(today.year, 1, 1), tomorrow)
            elif kind == "qtd":
                set_range(_quarter_range(today.year, (today.month - 1) // 3 + 1)[0], tomorrow)
            elif kind == "mtd":
                set_range(dt.date(today.year, today.month, 1), tomorrow)
            elif kind == "next":
                found.future = True
            elif kind == "lastn":
                n, unit = int(match.group(1)), match.group(2)
                days = n * {"day": 1, "week": 7, "month": 30}[unit]
                set_range(tomorrow - dt.timedelta(days=days), tomorrow)
            elif kind in ("lastq", "thisq"):
                quarter = (today.month - 1) // 3 + 1
                year = today.year
                if kind == "lastq":
                    quarter, year = (quarter - 1, year) if quarter > 1 else (4, year - 1)
                set_range(*_quarter_range(year, quarter))
            elif kind in ("lastm", "thism"):
                year, month = today.year, today.month
                if kind == "lastm":
                    year, month = (year, month - 1) if month > 1 else (year - 1, 12)
                set_range(*_month_range(year, month))
            elif kind in ("lasty", "thisy"):
                year = today.year - (kind == "lasty")
                set_range(dt.date(year, 1, 1), dt.date(year + 1, 1, 1))
            elif kind == "quarter":
                year = int(match.group(2)) if match.group(2) else today.year
                set_range(*_quarter_range(year, int(match.group(1))))
            elif kind in ("month", "may"):
                if kind == "month":
                    month, year_text = _MONTHS[match.group(1)], match.group(2)
                else:
                    month, year_text = 5, match.group(1) or match.group(2)
                if year_text:
                    year = int(year_text)
                else:   # the most recent such month that has begun
                    year = today.year if month <= today.month else today.year - 1
                start, end = _month_range(year, month)
                set_range(start, tomorrow if since else end)
            elif kind == "year":
                year = int(match.group(1))
                if since:
                    set_range(dt.date(year, 1, 1), tomorrow)
                else:
                    set_range(dt.date(year, 1, 1), dt.date(year + 1, 1, 1))
            mask(match)
    grain_pattern = (r"\b(?:by|per|each|every|a|for each|broken down by|split by|grouped by)"
                     r"\s+(day|week|month|quarter|year)s?\b|\b(" + "|".join(_GRAIN_WORDS)
                     + r")\b|\b(month|quarter|year|week|day) (?:over|by) (?:month|quarter|year"
                     r"|week|day)\b")
    for match in re.finditer(grain_pattern, joined):
        start_word = len(joined[:match.start()].split())
        if any(text.used[start_word:start_word + len(match.group(0).split())]):
            continue
        word = match.group(1) or match.group(3)
        found.grain = word if word else _GRAIN_WORDS[match.group(2)]  # type: ignore[assignment]
        mask(match)
    return found


def _phrases(names: Mapping[str, Sequence[str]]) -> list[tuple[list[str], str, float]]:
    """(words, name, score) for each name and synonym, longest first."""
    out = []
    for name, synonyms in names.items():
        out.append((_words(name.replace("_", " ")), name, 1.0))
        out.extend((_words(s), name, 0.95) for s in synonyms)
    return sorted(out, key=lambda p: -len(p[0]))


@dataclass
class _Index:
    """What parsing needs of a layer and a set of dimension values, built once per pair."""

    metric_phrases: list[tuple[list[str], str, float]]
    dimension_phrases: list[tuple[list[str], str, float]]
    ambiguous_phrases: list[tuple[list[str], str]]
    value_owners: dict[tuple[str, ...], dict[str, str]]
    by_first: dict[str, list[tuple[list[str], tuple[str, str], float]]]
    """Phrases (values, metrics, dimensions) by their first word."""
    vocabulary: frozenset[str]
    fuzzy_values: list[str]
    fuzzy_value_words: dict[str, tuple[str, ...]]
    dimension_words: list[str]
    dimension_names: list[str]
    metric_words: list[str]


_INDEXES: dict[tuple[int, int], tuple[Layer, Mapping[str, Sequence[str]], _Index]] = {}


def _index(layer: Layer, values: Mapping[str, Sequence[str]]) -> _Index:
    """The index of (layer, values), cached while the same objects are given (the
    warehouse's values are one object until their cache expires)."""
    key = (id(layer), id(values))
    cached = _INDEXES.get(key)
    if cached is not None and cached[0] is layer and cached[1] is values:
        return cached[2]
    metric_phrases = _phrases({m.name: m.synonyms for m in layer.metrics.values()})
    dimension_phrases = _phrases({d.name: d.synonyms for d in layer.dimensions.values()})
    owners: dict[tuple[str, ...], dict[str, str]] = {}
    for dimension, known in values.items():
        for value in known:
            words = tuple(_words(value))
            if words:
                owners.setdefault(words, {})[dimension] = value
    by_first: dict[str, list[tuple[list[str], tuple[str, str], float]]] = {}
    items = ([(list(w), ("value", " ".join(w)), 2.0) for w in owners]
             + [(w, ("metric", n), sc) for w, n, sc in metric_phrases if w]
             + [(w, ("dimension", n), sc) for w, n, sc in dimension_phrases if w])
    for item in items:
        by_first.setdefault(item[0][0], []).append(item)
    vocabulary = frozenset(w for item in items for w in item[0])
    fuzzy = {" ".join(w): w for w in owners if len(" ".join(w)) >= 6 and len(w) >= 2}
    index = _Index(
        metric_phrases, dimension_phrases,
        sorted(((_words(w), w) for w in layer.ambiguous), key=lambda p: -len(p[0])),
        owners, by_first, vocabulary, list(fuzzy), fuzzy,
        [" ".join(w) for w, _, _ in dimension_phrases if w],
        [n for w, n, _ in dimension_phrases if w],
        [" ".join(w) for w, _, _ in metric_phrases if w])
    if len(_INDEXES) > 8:
        _INDEXES.clear()
    _INDEXES[key] = (layer, values, index)
    return index


def _values(text: _Text, index: _Index, value_at: dict[str, int]) -> dict[str, set[str]]:
    """Known dimension values in the question by fuzzy match (typos: "oak labz"), for names
    of two words or more, on n-grams holding a word the layer does not know (the exact ones
    are matched with the metric and dimension words)."""
    filters: dict[str, set[str]] = {}
    if not index.fuzzy_values:
        return filters
    for n in (4, 3, 2):
        for start in range(len(text.words) - n + 1):
            grams = text.words[start:start + n]
            if any(text.used[start:start + n]) or grams[0] in _STOP or not any(
                    w not in index.vocabulary and w not in _STOP for w in grams):
                continue
            hit = process.extractOne(" ".join(grams), index.fuzzy_values, scorer=fuzz.ratio,
                                     score_cutoff=85.0)
            if hit is None:
                continue
            owners = index.value_owners[index.fuzzy_value_words[hit[0]]]
            for dimension, value in owners.items():
                filters.setdefault(dimension, set()).add(value)
                value_at.setdefault(value, start)
            text.take(start, n)
    return filters


def _fuzzy(text: _Text, phrases: list[tuple[list[str], str, float]]
           ) -> list[tuple[str, float, int, int]]:
    """Fuzzy metric matches of 1-3 free words: (name, score 0-1, position, words)."""
    table = {" ".join(words): name for words, name, _ in phrases if words}
    out: list[tuple[str, float, int, int]] = []
    for n in (3, 2, 1):
        for start in range(len(text.words) - n + 1):
            grams = text.words[start:start + n]
            if any(text.used[start:start + n]) or all(w in _STOP for w in grams):
                continue
            gram = " ".join(grams)
            if len(gram) < 4:
                continue
            hit = process.extractOne(gram, list(table), scorer=fuzz.ratio,
                                     score_cutoff=70.0)
            if hit is not None:
                out.append((table[hit[0]], float(hit[1]) / 100.0, start, n))
    return sorted(out, key=lambda h: -h[1])


def _top(text: _Text) -> tuple[Literal["desc", "asc"] | None, int | None]:
    joined = text.text()
    match = re.search(r"\b(top|best|biggest|largest|highest|most|leading)\s+(\d+)\b", joined) \
        or re.search(r"\b(bottom|worst|smallest|lowest|least)\s+(\d+)\b", joined)
    if match:
        order: Literal["desc", "asc"] = "asc" if match.group(1) in (
            "bottom", "worst", "smallest", "lowest", "least") else "desc"
        start = len(joined[:match.start()].split())
        text.take(start, 2)
        return order, int(match.group(2))
    match = re.search(r"\b(top|biggest|largest|highest|most|best|leading)\b", joined)
    if match:
        return "desc", None
    match = re.search(r"\b(bottom|worst|smallest|lowest|least)\b", joined)
    if match:
        return "asc", None
    return None, None


def parse_question(question: str, layer: Layer, values: Mapping[str, Sequence[str]], *,
                   today: dt.date) -> Parsed:
    """Read `question` against the layer; `values` are the dimensions' known values."""
    text = _Text(_words(question), [])
    text.used = [False] * len(text.words)
    if not text.words:
        return Parsed("refuse", reason="the question is empty")
    outside = sorted({w for w in text.words if w in _REFUSE_WORDS})
    if outside:
        return Parsed("refuse", reason=f"outside the semantic layer: {', '.join(outside)} "
                      "(it knows the metrics " + ", ".join(layer.metrics) + ")")
    order, limit = _top(text)
    when = _time(text, today)
    if when.future:
        return Parsed("refuse", reason="the question asks about the future: the semantic "
                      "layer holds what happened (no forecasts)")
    index = _index(layer, values)
    metric_phrases = index.metric_phrases
    ambiguous_phrases = index.ambiguous_phrases
    # the longest phrase wins across values, metrics and dimensions ("median days to
    # invoice" before the status "to invoice", "sale orders" before "sales")
    found: list[tuple[int, int, float, tuple[str, str], list[str]]] = []
    for position, word in enumerate(text.words):
        for phrase, item, score in index.by_first.get(word, ()):
            if text.words[position:position + len(phrase)] == phrase:
                found.append((-len(phrase), position, -score, item, phrase))
    found.sort(key=lambda f: (f[0], f[2], f[1]))
    metric_hits: list[tuple[str, float, int]] = []
    dimension_hits: list[tuple[str, int]] = []
    filters: dict[str, set[str]] = {}
    ambiguous_values: list[tuple[str, list[str]]] = []
    value_at: dict[str, int] = {}
    for _length, start, negative, (kind, name), phrase in found:
        if any(text.used[start:start + len(phrase)]):
            continue
        if kind == "metric":
            metric_hits.append((name, -negative, start))
        elif kind == "dimension":
            dimension_hits.append((name, start))
        else:
            owners = index.value_owners[tuple(phrase)]
            for value in owners.values():
                value_at.setdefault(value, start)
            if len(owners) > 1:
                ambiguous_values.append((name, sorted(owners)))
            for dimension, value in owners.items():
                filters.setdefault(dimension, set()).add(value)
        text.take(start, len(phrase))
    for dimension, more in _values(text, index, value_at).items():
        filters.setdefault(dimension, set()).update(more)
    # fuzzy dimension words ("custmer"), unless closer to a metric's
    for start, word in enumerate(text.words):
        if text.used[start] or word in _STOP or len(word) < 5:
            continue
        hit = process.extractOne(word, index.dimension_words, scorer=fuzz.ratio,
                                 score_cutoff=85.0)
        if hit is not None and process.extractOne(
                word, index.metric_words, scorer=fuzz.ratio,
                score_cutoff=hit[1] + 0.1) is None:
            dimension_hits.append((index.dimension_names[hit[2]], start))
            text.take(start, 1)
    ambiguous_metrics: list[str] = []
    for phrase, word in ambiguous_phrases:
        for start in text.find(phrase):
            ambiguous_metrics.extend(layer.ambiguous[word])
            text.take(start, len(phrase))
    compare, problem = _compare(text, layer, when, filters, value_at, today)
    # a dimension word before (or after) a value of that dimension names the filter
    group_by = []
    for name, _position in dimension_hits:
        if name not in filters and name not in group_by:
            group_by.append(name)
    candidates: list[tuple[str, float]] = []
    metrics_named = list(dict.fromkeys(n for n, _, _ in metric_hits))
    why = "exact"
    if len(metrics_named) > 1:
        return _clarify(layer, [(m, 0.7) for m in metrics_named], group_by, when, filters,
                        order, limit, "the question names more than one metric "
                        "(one metric per question)")
    if metrics_named:
        best = max(s for n, s, _ in metric_hits)
        candidates = [(metrics_named[0], best)]
        why = "name" if best == 1.0 else "synonym"
    elif ambiguous_metrics:
        return _clarify(layer, [(m, 0.6) for m in dict.fromkeys(ambiguous_metrics)], group_by,
                        when, filters, order, limit, "the words name more than one metric")
    else:
        fuzzy = _fuzzy(text, metric_phrases)
        if fuzzy:
            name, score, start, n = fuzzy[0]
            text.take(start, n)
            others = [h for h in fuzzy[1:] if h[0] != name and score - h[1] <= CLOSE]
            if others:
                return _clarify(layer, [(name, score), (others[0][0], others[0][1])],
                                group_by, when, filters, order, limit,
                                "two metrics are about as close to the words")
            if score * 100 < FUZZY_CUTOFF:
                return _clarify(layer, [(name, score)], group_by, when, filters, order, limit,
                                f"not sure the question means {name}")
            candidates = [(name, score * 0.95)]
            why = "fuzzy"
    if not candidates:
        return Parsed("refuse", reason="no metric of the semantic layer in the question (it "
                      "knows " + ", ".join(layer.metrics) + ")")
    name, confidence = candidates[0]
    if problem is not None:
        reading = _reading(layer, name, 0.5, group_by, when, filters, order, limit, problem)
        if isinstance(reading, str):
            return Parsed("refuse", reason=reading)
        return Parsed("clarify", [reading], problem)
    unknown = [w for w in text.free() if w not in _STOP and not w.isdigit()]
    if ambiguous_values:
        said, dimensions = ambiguous_values[0]
        readings = []
        for owner in dimensions:
            only = {d: v for d, v in filters.items() if d == owner or d not in dimensions}
            reading = _reading(layer, name, confidence - 0.3, group_by, when, only, order,
                               limit, f"{said!r} as a {owner}")
            if isinstance(reading, Reading):
                readings.append(reading)
        return Parsed("clarify", readings,
                      f"{said!r} is a value of {', '.join(dimensions)}")
    confidence -= UNKNOWN_WORD_PENALTY * len(unknown)
    singular = bool(re.match(r"^(which|what)\b", text.text())) and any(
        text.words[p] == n for n, p in dimension_hits)
    reading = _reading(layer, name, confidence, group_by, when, filters, order, limit,
                       why + (f"; words not understood: {', '.join(unknown)}" if unknown else ""),
                       singular, compare)
    if isinstance(reading, str):
        return Parsed("refuse", reason=reading)
    if reading.confidence < THRESHOLD:
        return Parsed("clarify", [reading], "not confident: " + reading.why)
    return Parsed("answer", [reading])


def _reading(layer: Layer, metric_name: str, confidence: float, group_by: list[str],
             when: _Time, filters: Mapping[str, set[str]], order: Literal["desc", "asc"] | None,
             limit: int | None, why: str, singular: bool = False,
             compare: Compare | None = None) -> Reading | str:
    """A reading, or why the metric cannot answer it (a dimension it lacks...)."""
    metric = layer.metrics[metric_name]
    table = layer.tables[metric.table]
    for dimension in (*group_by, *filters):
        if layer.dimension_column(dimension, metric.table) is None:
            return (f"{metric.name} cannot be split or filtered by {dimension} (it has "
                    f"{', '.join(layer.dimensions_of(metric))})")
    grain = when.grain
    start, end = when.start, when.end
    if compare is not None and compare.kind == "period":
        if table.time is None:
            return f"{metric.name} has no time column: its periods cannot be compared"
        start = end = grain = None
    if compare is not None and compare.kind == "member":
        if layer.dimension_column(compare.dimension or "", metric.table) is None:
            return (f"{metric.name} cannot be compared by {compare.dimension} (it has "
                    f"{', '.join(layer.dimensions_of(metric))})")
        # "customer Oak Labs vs Harbor Foods": the dimension's word names the sides
        group_by = [d for d in group_by if d != compare.dimension]
    if grain is not None and (table.time is None or grain not in table.time.grains):
        return f"{metric.name} is not available by {grain}"
    if order is not None and limit is None:
        limit = 1 if singular else 10 if group_by else None
    if order is not None and not group_by:
        order, limit = (order, limit) if grain else (None, None)
    query = MetricQuery(
        metric=metric.name, group_by=tuple(group_by), grain=grain,
        filters=tuple(Filter(dimension=d, values=tuple(sorted(v)))
                      for d, v in sorted(filters.items())),
        start=start, end=end, order=order, limit=limit, compare=compare)
    return Reading(query, round(max(confidence, 0.0), 3), why)


def _clarify(layer: Layer, metrics: list[tuple[str, float]], group_by: list[str], when: _Time,
             filters: Mapping[str, set[str]], order: Literal["desc", "asc"] | None,
             limit: int | None, reason: str) -> Parsed:
    readings = [r for m, score in metrics
                if isinstance(r := _reading(layer, m, score, group_by, when, filters, order,
                                            limit, reason), Reading)]
    if not readings:
        return Parsed("refuse", reason=reason + "; and none of them fits the question")
    return Parsed("clarify", readings, reason)


_COMPARE_WORDS = frozenset({"vs", "versus", "against", "compare", "compared", "comparing",
                            "comparison", "contrast", "contrasted"})
_LABEL_MONTHS = [m for m in calendar.month_name if m]


def _period_label(start: dt.date, end: dt.date) -> str:
    if start.month == 1 and start.day == 1 and end == dt.date(start.year + 1, 1, 1):
        return str(start.year)
    if start.day == 1 and (start.month - 1) % 3 == 0 and end == _quarter_range(
            start.year, (start.month - 1) // 3 + 1)[1]:
        return f"Q{(start.month - 1) // 3 + 1} {start.year}"
    if start.day == 1 and end == _month_range(start.year, start.month)[1]:
        return f"{_LABEL_MONTHS[start.month - 1]} {start.year}"
    return f"{start.isoformat()}..{(end - dt.timedelta(days=1)).isoformat()}"


def _months_back(day: dt.date, months: int) -> dt.date:
    """`day` so many months earlier, its day clipped to that month's length."""
    index = day.year * 12 + day.month - 1 - months
    year, month = divmod(index, 12)
    return dt.date(year, month + 1, min(day.day, calendar.monthrange(year, month + 1)[1]))


def _same_span_before(kind: str, start: dt.date, end: dt.date) -> tuple[dt.date, dt.date] | None:
    """A to-date span (YTD, QTD, MTD) one period earlier: from that period's start to the
    same day of the period (its last day clipped)."""
    months = {"ytd": 12, "qtd": 3, "mtd": 1}.get(kind)
    if months is None:
        return None
    last = _months_back(end - dt.timedelta(days=1), months)
    return _months_back(start, months), min(last + dt.timedelta(days=1), start)


_TO_DATE_BEFORE = {"ytd": "lasty", "qtd": "lastq", "mtd": "lastm"}


def _compare(text: _Text, layer: Layer, when: _Time, filters: dict[str, set[str]],
             value_at: Mapping[str, int], today: dt.date) -> tuple[Compare | None, str | None]:
    """The comparison the question asks for ("2026 vs 2025", "Oak Labs versus Harbor Foods",
    "compare ... and ..."): (compare, None), (None, why it cannot be read) or (None, None)
    when the question compares nothing. A member comparison's values leave `filters`."""
    marks = [i for i, w in enumerate(text.words) if w in _COMPARE_WORDS and not text.used[i]]
    if not marks:
        return None, None
    for i in marks:
        text.take(i, 1)
    ranges = sorted(when.ranges)
    members = {d: v for d, v in filters.items() if len(v) > 1}
    if len(ranges) >= 2 and members:
        return None, "compare one thing at a time: two periods or two members, not both"
    if len(ranges) == 2 and when.grain is not None:
        return None, (f"a comparison of two periods is one number a side, not by "
                      f"{when.grain} (ask for each period by {when.grain})")
    if len(ranges) == 2:
        (_, kind_a, start_a, end_a), (_, kind_b, start_b, end_b) = ranges
        if _TO_DATE_BEFORE.get(kind_a) == kind_b:
            start_b, end_b = _same_span_before(kind_a, start_a, end_a) or (start_b, end_b)
        elif _TO_DATE_BEFORE.get(kind_b) == kind_a:
            start_a, end_a = _same_span_before(kind_b, start_b, end_b) or (start_a, end_a)
        elif kind_a == kind_b == "lastn" and (start_a, end_a) == (start_b, end_b):
            # "last 30 days vs the previous 30 days": the span just before
            start_b, end_b = start_a - (end_a - start_a), start_a
        if (start_a, end_a) == (start_b, end_b):
            return None, "the two sides of the comparison are the same period"
        label_a, label_b = _period_label(start_a, end_a), _period_label(start_b, end_b)
        when.start = when.end = None
        return Compare(kind="period", sides=(Side(label=label_a, start=start_a, end=end_a),
                                             Side(label=label_b, start=start_b, end=end_b))
                       ), None
    if len(ranges) > 2:
        return None, "more than two periods to compare (a comparison has two sides)"
    if len(members) > 1:
        return None, ("the two sides of the comparison are values of different dimensions ("
                      + ", ".join(sorted(members)) + ")")
    if members:
        dimension, values = next(iter(members.items()))
        if len(values) != 2:
            return None, f"more than two values of {dimension} to compare"
        if not layer.dimensions[dimension].values:
            return None, f"{dimension} is not compared by its values"
        first, second = sorted(values, key=lambda v: (value_at.get(v, len(text.words)), v))
        del filters[dimension]
        return Compare(kind="member", dimension=dimension,
                       sides=(Side(label=first, value=first), Side(label=second, value=second))
                       ), None
    singles = [d for d, v in filters.items() if len(v) == 1]
    if len(singles) == 2:
        return None, ("the two sides of the comparison are values of different dimensions ("
                      + ", ".join(sorted(singles)) + ")")
    return None, "the comparison's two sides are not both known (a period or a known value " \
        "on each side)"
