"""Where a compiled step spends its time, per layer type, from an XLA profile.

``profile(call, steps)`` runs ``call`` under ``jax.profiler.trace`` and reads
the trace back (``jax.profiler.ProfileData``, no TensorBoard needed);
``attribute(trace, hlo_text)`` gives each HLO instruction of the compiled
program, and each layer type, its share of the step's time.

How the time is found, on XLA's CPU backend (jax 0.10):

* XLA runs the compiled program as a sequence of "thunks", one per HLO
  instruction of the entry computation (a fusion, a convolution, a copy...),
  and the profiler records one event per thunk, named after the instruction
  (stat ``hlo_op``), on the thread that starts it. For a thunk that computes
  on the calling thread (most fusions) that event is its whole work.
* A convolution or a matrix product on Eigen's kernels, or a loop fusion
  partitioned across threads, may hand its work out as tasks to XLA's
  thread pool and return before the work is done: its event then covers
  little more than the hand-out. The profiler records each task too:
  ``ThreadpoolListener::Record`` where it is scheduled (a producer id) and
  ``StartRegion`` / ``StopRegion`` around its run on a worker thread (the
  same id, as consumer). A task therefore belongs to the thunk (or, through
  a chain of tasks, the thunk) that was running on the scheduling thread
  when it was scheduled.
* At each moment, each thread runs the innermost thunk event or task region
  open on it, and works for its owner: the thunk itself, or the task's
  owner. A task whose owner is no thunk (the runtime's own: starting the
  program, resuming it on another thread) works for ``(runtime)``; a thread
  waiting for the program to finish, or with nothing open, is idle.
* Every moment at which anything runs is shared equally among the distinct
  owners running then, on all threads. A thunk whose calling thread waits
  while its tasks compute therefore counts once, not once per thread, and
  two thunks running side by side count half each. The times found add up
  to the wall time of a step during which any of its work ran.

Tracing slows a step down (every thread-pool task is recorded), so the
profile gives shares, and the step time of a record comes from untraced
runs. The per-thunk events are those of XLA's CPU runtime in jax 0.10
(``ThunkExecutor``); a runtime that stops recording them leaves every layer
type at zero, which the record shows.

Each instruction is mapped to a layer type through the compiled program's
text (``compiled.as_text()``): its ``op_name`` metadata holds the
``jax.named_scope`` of the layer it came from (``layer:<type>``), inside
``transpose(...)`` for the backward pass. A fusion takes the scope most of
its heaviest fused instructions have (convolutions before dots before window
reductions before reductions before the rest). A convolution or dot that
XLA rebuilt without metadata (to change its layout) takes the scope of the
bitcast, copy or transpose that inherited the original's metadata among its
users. Any other instruction without metadata (a layout copy XLA inserted)
takes the scope of its nearest user with one, else of its nearest operand
with one: such time is counted as ``inferred``.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax

import timing

SCOPE = re.compile(r"layer:(\w+)")
RUNTIME = "(runtime)"
UNSCOPED = "(unscoped)"

# HLO opcodes by how heavy they are, for the scope of a fusion.
_HEAVY = ({"convolution", "custom-call"}, {"dot"},
          {"reduce-window", "select-and-scatter", "scatter", "gather", "sort"},
          {"reduce"})
# The JAX primitive behind an HLO opcode, as the end of an ``op_name``.
_PRIMITIVES = {"convolution": "conv_general_dilated", "dot": "dot_general"}
# Fusions made only of these move data and compute nothing.
_DATA_MOVEMENT = {"copy", "transpose", "bitcast", "reshape", "slice",
                  "dynamic-slice", "dynamic-update-slice", "pad",
                  "concatenate", "broadcast", "parameter", "constant",
                  "tuple", "get-tuple-element", "reverse", "bitcast-convert",
                  "copy-start", "copy-done", "iota"}


@dataclasses.dataclass
class Instruction:
  """One HLO instruction of the compiled program's text."""

  name: str
  opcode: str
  computation: str
  op_name: str = ""
  operands: tuple[str, ...] = ()
  called: tuple[str, ...] = ()
  parameter: int | None = None     # the index of a ``parameter(i)``


def _split_type(rest: str) -> tuple[str, str]:
  """``"(f32[2], s8[2]) fusion(%a), ..."`` -> (type, ``"fusion(%a), ..."``)."""
  if rest.startswith("("):
    depth = 0
    for index, char in enumerate(rest):
      depth += {"(": 1, ")": -1}.get(char, 0)
      if depth == 0:
        return rest[:index + 1], rest[index + 1:].lstrip()
  head, _, tail = rest.partition(" ")
  return head, tail


def _balanced(text: str, start: int) -> int:
  """The index just past the parenthesis closing the one at ``start``."""
  depth = 0
  for index in range(start, len(text)):
    depth += {"(": 1, ")": -1}.get(text[index], 0)
    if depth == 0:
      return index + 1
  return len(text)


_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT\s+)?%?([\w.\-]+)\s+=\s+(.*)$")
_CALLED = re.compile(
    r"\b(?:calls|to_apply|body|condition|branch_computations)="
    r"(\{[^}]*\}|%?[\w.\-]+)")


def parse_hlo(text: str) -> tuple[dict[str, Instruction], str]:
  """The instructions of an HLO module's text by name, and the name of the
  entry computation."""
  instructions: dict[str, Instruction] = {}
  computation, entry = "", ""
  for line in text.splitlines():
    if not line.startswith(" "):
      header = _HEADER.match(line)
      if header:
        computation = header.group(1)
        if line.startswith("ENTRY"):
          entry = computation
      continue
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name, rest = match.groups()
    _, rest = _split_type(rest)
    opcode, paren, _ = rest.partition("(")
    if not paren:
      continue
    end = _balanced(rest, len(opcode))
    operands = tuple(re.findall(r"%([\w.\-]+)", rest[len(opcode):end]))
    attributes = rest[end:]
    op_name = re.search(r'op_name="([^"]*)"', attributes)
    called = []
    for group in _CALLED.findall(attributes):
      called += re.findall(r"%?([\w.\-]+)", group.strip("{}"))
    opcode = opcode.strip()
    index = (int(rest[len(opcode) + 1:end - 1]) if opcode == "parameter"
             else None)
    instructions[name] = Instruction(
        name, opcode, computation, op_name.group(1) if op_name else "",
        operands, tuple(called), index)
  return instructions, entry


def scope_of(op_name: str) -> tuple[str, str] | None:
  """``(layer type, "fwd" | "bwd")`` from an ``op_name``: the innermost
  ``layer:`` scope, backward when it sits inside ``transpose(``."""
  matches = list(SCOPE.finditer(op_name))
  if not matches:
    return None
  last = matches[-1]
  backward = "transpose(" in op_name[:last.start()]
  return last.group(1), "bwd" if backward else "fwd"


@dataclasses.dataclass(frozen=True)
class Label:
  """What an instruction's time counts as."""

  scope: str          # a layer type, ``(unscoped)`` or ``(runtime)``
  direction: str      # "fwd", "bwd" or "" (no scope)
  kind: str           # "convolution", "dot", "data movement", "other"
  inferred: bool      # scope taken from a neighbour, not the instruction


class Labeller:
  """Labels the instructions of one compiled program."""

  def __init__(self, hlo_text: str):
    self.instructions, self.entry = parse_hlo(hlo_text)
    self.by_computation = collections.defaultdict(list)
    for instruction in self.instructions.values():
      self.by_computation[instruction.computation].append(instruction)
    self.users = collections.defaultdict(list)
    self.parameters = {}
    for instruction in self.instructions.values():
      for operand in instruction.operands:
        self.users[operand].append(instruction.name)
      if instruction.parameter is not None:
        self.parameters[instruction.computation,
                        instruction.parameter] = instruction.name
    self.cache: dict[str, Label] = {}

  def _inside(self, instruction: Instruction, seen=None):
    """The instruction and everything in the computations it calls."""
    seen = set() if seen is None else seen
    yield instruction
    for computation in instruction.called:
      if computation in seen:
        continue
      seen.add(computation)
      for inner in self.by_computation.get(computation, ()):
        yield from self._inside(inner, seen)

  def _own_scope(self, instruction: Instruction):
    """The scope of the heaviest instruction inside, by majority."""
    inside = list(self._inside(instruction))
    for opcodes in (*_HEAVY, None):
      votes = collections.Counter(
          scope for inner in inside
          if opcodes is None or inner.opcode in opcodes
          for scope in [scope_of(inner.op_name)] if scope)
      if votes:
        return votes.most_common(1)[0][0]
    return None

  def _kind(self, instruction: Instruction) -> str:
    opcodes = {inner.opcode for inner in self._inside(instruction)}
    if "convolution" in opcodes:
      return "convolution"
    if "dot" in opcodes:
      return "dot"
    if opcodes - {"fusion", "call"} <= _DATA_MOVEMENT:
      return "data movement"
    return "other"

  def _heir_scope(self, name: str, limit: int = 8):
    """The scope of a convolution or dot that XLA rebuilt without metadata
    (to change its layout): the original's metadata went to the bitcast,
    copy or transpose that now stands for it, among its users or inside a
    fusion that uses it."""
    primitive = _PRIMITIVES.get(self._kind(self.instructions[name]))
    if primitive is None:
      return None
    frontier = [name]
    for _ in range(limit):
      following = []
      for current in frontier:
        for user_name in self.users.get(current, ()):
          user = self.instructions[user_name]
          if user.opcode == "fusion" and user.called:
            heirs = [self.parameters.get((user.called[0], index))
                     for index, operand in enumerate(user.operands)
                     if operand == current]
          elif user.opcode in _DATA_MOVEMENT:
            heirs = [user_name]
          else:
            heirs = []
          for heir in filter(None, heirs):
            op_name = self.instructions[heir].op_name
            if op_name.endswith("/" + primitive) and scope_of(op_name):
              return scope_of(op_name)
            following.append(heir)
      frontier = following
    return None

  def _neighbour_scope(self, name: str, limit: int = 8):
    """The scope of the nearest user with one, else operand (breadth first,
    within ``limit`` steps)."""
    for neighbours in (lambda n: self.users.get(n, ()),
                       lambda n: self.instructions[n].operands):
      frontier, seen = [name], {name}
      for _ in range(limit):
        following = []
        for current in frontier:
          for neighbour in neighbours(current):
            if neighbour in seen or neighbour not in self.instructions:
              continue
            seen.add(neighbour)
            scope = self._own_scope(self.instructions[neighbour])
            if scope:
              return scope
            following.append(neighbour)
        frontier = following
    return None

  def label(self, name: str) -> Label:
    """The label of the instruction ``name`` (a thunk's ``hlo_op``)."""
    if name in self.cache:
      return self.cache[name]
    instruction = self.instructions.get(name)
    if instruction is None:
      label = Label(UNSCOPED, "", "other", False)
    else:
      scope, inferred = self._own_scope(instruction), False
      if scope is None:
        scope, inferred = self._heir_scope(name), False
      if scope is None:
        scope, inferred = self._neighbour_scope(name), True
      scope_name, direction = scope or (UNSCOPED, "")
      label = Label(scope_name, direction, self._kind(instruction),
                    inferred and scope is not None)
    self.cache[name] = label
    return label


# --- The trace. ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Trace:
  """A profile of some calls: the trace, and the CPU time (every thread,
  from ``time.process_time``) the process used meanwhile."""

  data: Any                   # jax.profiler.ProfileData
  calls: int
  process_seconds: float


def profile(call: Callable, steps: int, keep: str | None = None) -> Trace:
  """Runs ``call`` (blocked until ready) ``steps`` times under the profiler.

  Args:
    call: one step, without arguments.
    steps: how many to trace.
    keep: a folder to keep the trace in (TensorBoard's layout, with a
      Perfetto ``perfetto_trace.json.gz``); by default it is deleted.

  Returns:
    The :class:`Trace`.
  """
  folder = keep or tempfile.mkdtemp(prefix="xla-profile-")
  try:
    with jax.profiler.trace(folder, create_perfetto_trace=keep is not None):
      start = time.process_time()
      for _ in range(steps):
        timing.block(call())
      process_seconds = time.process_time() - start
    (path,) = sorted(glob.glob(os.path.join(
        folder, "plugins", "profile", "*", "*.xplane.pb")))[-1:]
    return Trace(jax.profiler.ProfileData.from_file(path), steps,
                 process_seconds)
  finally:
    if keep is None:
      shutil.rmtree(folder, ignore_errors=True)


@dataclasses.dataclass
class _Span:
  """A thunk's event, a task's region or a wait, on one thread (ns)."""

  start: int
  end: int
  kind: str                # "thunk", "task" or "wait"
  key: object = None       # the thunk's name, or the task's id


def _innermost(spans: list[_Span]) -> list[tuple[int, int, _Span]]:
  """A thread's time as ``(start, end, span)`` pieces, each piece covered by
  the innermost of the (nested) ``spans`` running then."""
  pieces: list[tuple[int, int, _Span]] = []
  stack: list[_Span] = []
  cursor = 0

  def close(until):
    nonlocal cursor
    while stack and stack[-1].end <= until:
      top = stack.pop()
      if cursor < top.end:
        pieces.append((cursor, top.end, top))
      cursor = max(cursor, top.end)

  for span in sorted(spans, key=lambda span: (span.start, -span.end)):
    close(span.start)
    if stack:
      if cursor < span.start:
        pieces.append((cursor, span.start, stack[-1]))
      span.end = min(span.end, stack[-1].end)
    cursor = span.start
    stack.append(span)
  close(2**63)
  return pieces


class _Threads:
  """The thunk events and thread-pool tasks of one program in a trace."""

  def __init__(self, module: str):
    self.module = module
    self.scheduled_in: dict[int, _Span | None] = {}  # task -> where recorded
    self.threads: list[list[_Span]] = []
    self.run_starts: dict[int, list[int]] = collections.defaultdict(list)
    self.run_ends: dict[int, int] = {}

  def read(self, line) -> None:
    """Reads the events of one thread (``line`` of the trace)."""
    stack: list[_Span] = []     # what runs now, innermost last
    spans: list[_Span] = []
    regions: list[_Span] = []   # the task regions open now

    def enter(span):
      while stack and stack[-1].end <= span.start:
        stack.pop()
      stack.append(span)
      spans.append(span)

    events = sorted(line.events, key=lambda e: (e.start_ns, -e.duration_ns))
    last = max((int(e.start_ns + e.duration_ns) for e in events), default=0)
    for event in events:
      start = int(event.start_ns)
      end = int(event.start_ns + event.duration_ns)
      stats = dict(event.stats)
      if event.name == "ThreadpoolListener::StartRegion":
        # Open until its StopRegion; until the trace's end if none comes.
        region = _Span(start, last, "task", stats.get("_c"))
        enter(region)
        regions.append(region)
      elif event.name == "ThreadpoolListener::StopRegion":
        if regions:
          region = regions.pop()
          region.end = start
          while stack and stack.pop() is not region:
            pass
      elif event.name == "ThreadpoolListener::Record":
        while stack and stack[-1].end <= start:
          stack.pop()
        if stats.get("_p") is not None:
          self.scheduled_in[stats["_p"]] = stack[-1] if stack else None
      elif "hlo_op" in stats and stats.get("hlo_module") == self.module:
        enter(_Span(start, end, "thunk", str(stats["hlo_op"])))
        self.run_starts[stats.get("run_id")].append(start)
      elif event.name.startswith("ThunkExecutor::Execute"):
        # The calling thread waits for the program: idle, nobody's work.
        enter(_Span(start, end, "wait"))
        self.run_ends[stats.get("run_id")] = end
    self.threads.append(spans)

  def owner(self, span: _Span) -> str | None:
    """Whom a span's time is for: a thunk's name, ``(runtime)``, or
    ``None`` (a wait). A task works for the owner of whatever ran where it
    was scheduled, followed through tasks scheduled by tasks."""
    seen = set()
    while span is not None and span.kind == "task":
      if span.key in seen or span.key not in self.scheduled_in:
        return RUNTIME
      seen.add(span.key)
      span = self.scheduled_in[span.key]
    if span is None:
      return RUNTIME
    return span.key if span.kind == "thunk" else None

  def seconds(self) -> dict[str, float]:
    """Seconds per thunk (all runs) and ``(runtime)``: every moment at which
    something runs is shared equally among the owners of what runs then, on
    every thread (a thunk whose caller waits while its tasks run counts
    once, two thunks running side by side half each)."""
    changes = []
    for spans in self.threads:
      for start, end, span in _innermost(spans):
        owner = self.owner(span)
        if owner is not None:
          changes += [(start, 1, owner), (end, -1, owner)]
    changes.sort(key=lambda change: change[:2])
    running: collections.Counter = collections.Counter()
    seconds: dict[str, float] = collections.defaultdict(float)
    previous = None
    for time_ns, change, owner in changes:
      if running and previous is not None and time_ns > previous:
        share = (time_ns - previous) * 1e-9 / len(running)
        for name in running:
          seconds[name] += share
      previous = time_ns
      running[owner] += change
      if running[owner] <= 0:
        del running[owner]
    return dict(seconds)

  def walls(self) -> list[float]:
    """Seconds from each run's first thunk to the end of its wait."""
    return sorted((self.run_ends.get(run, max(starts)) - min(starts)) * 1e-9
                  for run, starts in self.run_starts.items())


def thunk_times(data, module: str) -> dict:
  """Time per thunk of the program ``module`` in a trace (see
  ``_Threads.seconds``).

  Args:
    data: ``jax.profiler.ProfileData``.
    module: the HLO module's name (``jit_step``), as in the trace's
      ``hlo_module`` stat.

  Returns:
    ``{"seconds": {instruction name or "(runtime)": seconds, all runs},
    "runs": the number of executions traced, "wall": median seconds from
    the start of an execution to its end}``.
  """
  threads = _Threads(module)
  for line in data.find_plane_with_name("/host:CPU").lines:
    threads.read(line)
  walls = threads.walls()
  return {"seconds": threads.seconds(), "runs": len(walls),
          "wall": walls[len(walls) // 2] if walls else 0.0}


def attribute(trace: Trace, hlo_text: str) -> dict:
  """Time per step by layer type, pass and kind of instruction.

  Args:
    trace: a :func:`profile` of some executions of one compiled program.
    hlo_text: that program's ``compiled.as_text()``.

  Returns:
    ``{"steps", "wall_ms" (median wall time of a traced step), "busy_ms"
    (the time found per step: the wall time during which any of its work
    ran), "process_cpu_ms" (the CPU time, all threads, the process used per
    step meanwhile, from ``time.process_time``), "inferred_ms", "scopes":
    {type: {"fwd": ms, "bwd": ms}}, "kinds": {kind: ms}, "instructions":
    [{"name", "scope", "direction", "kind", "inferred", "ms"}, ...]
    (heaviest first)}``, every time per step.
  """
  module = re.match(r"HloModule ([\w.\-]+)", hlo_text).group(1)
  found = thunk_times(trace.data, module)
  steps = max(found["runs"], 1)
  labeller = Labeller(hlo_text)
  scopes: dict = collections.defaultdict(lambda: {"fwd": 0.0, "bwd": 0.0})
  kinds: dict = collections.defaultdict(float)
  rows, inferred = [], 0.0
  for name, total in found["seconds"].items():
    ms = total / steps * 1e3
    if name == RUNTIME:
      label = Label(RUNTIME, "", "other", False)
    else:
      label = labeller.label(name)
    scopes[label.scope][label.direction or "fwd"] += ms
    kinds[label.kind] += ms
    inferred += ms if label.inferred else 0.0
    rows.append({"name": name, "scope": label.scope,
                 "direction": label.direction, "kind": label.kind,
                 "inferred": label.inferred, "ms": ms})
  rows.sort(key=lambda row: -row["ms"])
  return {"steps": found["runs"], "wall_ms": found["wall"] * 1e3,
          "busy_ms": sum(row["ms"] for row in rows),
          "process_cpu_ms": trace.process_seconds / trace.calls * 1e3,
          "inferred_ms": inferred,
          "scopes": {k: dict(v) for k, v in scopes.items()},
          "kinds": dict(kinds), "instructions": rows}
