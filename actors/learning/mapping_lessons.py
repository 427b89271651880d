"""A tenant's field-mapping lessons, indexed by what each one teaches.

A field mapping (crews/field_mapping.py) asks the tenant's learning shard for what it taught about
the fields being mapped. The matcher applies a tenant's lessons most trusted first
(`Learned.from_corrections`): the most trusted lesson of a source field's words (its *winner*)
decides that field; winners name aliases of their targets; the most trusted winner teaching a word
synonym decides that synonym. `MappingLessons.select` returns the few lessons that decide a given
pair of schemas, so that the matcher, given only those, maps exactly as with all of them, however
much the tenant taught:

- the winner of each source field;
- per target of the schema (and for "no counterpart"), its `per_target` most trusted winners, as
  many as the matcher compares (crews.field_matcher.ALIASES_PER_TARGET);
- per word of the schemas' names and of those aliases' names, the most trusted winner teaching
  it a synonym.

Every list of lessons under a key is kept in trust order, sorted again only after a lesson in it
was added or its trust moved (`changed`), so a mapping reads the heads of a few lists instead of
sorting thousands of lessons.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterable, Iterator, Protocol, TypeVar

from crews.field_matcher import Learned, exact_key, source_key
from crews.field_words import name_parts


class Lesson(Protocol):
    id: str


L = TypeVar("L", bound=Lesson)


class MappingLessons(Generic[L]):
    """`trust(lesson)` orders lessons (greatest first); `usable(lesson)` is false for a lesson too
    little trusted to apply at all; `mapping(lesson)` is the (source_field, target_field, accepted)
    a lesson teaches (`accepted`: an accepted mapping, not a correction), None when it teaches no
    field mapping."""

    def __init__(self, trust: Callable[[L], tuple], usable: Callable[[L], bool],
                 mapping: Callable[[L], tuple[str, str | None, bool] | None]) -> None:
        self._trust, self._usable, self._mapping = trust, usable, mapping
        self._by_key: dict[str, list[L]] = {}
        self._keys: dict[str, tuple[str, ...]] = {}  # lesson id -> the keys it is listed under
        self._exact: dict[str, str] = {}  # lesson id -> the exact key of its source field
        self._unsorted: set[str] = set()

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, lessons: Iterable[L]) -> None:
        for lesson in lessons:
            taught = self._mapping(lesson)
            if taught is None or lesson.id in self._keys:
                continue
            source, target, accepted = taught
            if accepted:
                if target is None:
                    continue  # an accepted "no counterpart" names no alias
                keys = Learned.keys_of_accepted(source, target)
            else:
                keys = Learned.keys_of(source, target)
            self._keys[lesson.id] = tuple(keys)
            if (exact := exact_key(source)) is not None:
                self._exact[lesson.id] = exact
            for key in keys:
                self._by_key.setdefault(key, []).append(lesson)
            self._unsorted.update(keys)

    def changed(self, lessons: Iterable[L]) -> None:
        """These lessons' trust moved (a repeat, feedback, or its undoing)."""
        for lesson in lessons:
            self._unsorted.update(self._keys.get(lesson.id, ()))

    def ranked(self, key: str) -> list[L]:
        """The lessons under `key`, most trusted first."""
        lessons = self._by_key.get(key)
        if not lessons:
            return []
        if key in self._unsorted:
            lessons.sort(key=self._trust, reverse=True)
            self._unsorted.discard(key)
        return lessons

    def _winner(self, lesson: L) -> bool:
        """Whether `lesson` is the most trusted of its source field's lessons (the one that decides it)."""
        exact = self._exact.get(lesson.id)
        return exact is not None and self.ranked(exact)[0] is lesson

    def _winners(self, key: str, most: int) -> Iterator[L]:
        found = 0
        for lesson in self.ranked(key):
            if found == most or not self._usable(lesson):  # usable ones come first
                return
            if self._winner(lesson):
                found += 1
                yield lesson

    def select(self, sources: Iterable[str], targets: Iterable[str], per_target: int) -> list[L]:
        """The lessons that decide a mapping of `sources` to `targets`, most trusted first."""
        sources, targets = list(sources), list(targets)
        chosen: dict[str, L] = {}
        for source in sources:
            if (exact := exact_key(source)) is not None:
                chosen.update((lesson.id, lesson) for lesson in self._winners(exact, 1))
        aliases: list[L] = []
        for key in {"target:" + source_key(target) for target in targets} | {"none"}:
            aliases += self._winners(key, per_target)
        chosen.update((lesson.id, lesson) for lesson in aliases)
        names = sources + targets + [self._mapping(lesson)[0] for lesson in aliases]
        for word in {word for name in names for word in name_parts(name)}:
            chosen.update((lesson.id, lesson) for lesson in self._winners("word:" + word, 1))
        return sorted(chosen.values(), key=self._trust, reverse=True)
