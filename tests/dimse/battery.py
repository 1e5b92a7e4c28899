"""Running the hostile battery against a node: each case on its own connection (a few at a
time), while a holder keeps 40 idle or half-open connections open, a good client probes
about every second, and the node's RSS is sampled every 0.1 s.

:func:`run_battery` returns a :class:`Report` with every case's answer and the problems
found in it, the good client's longest lockout and the peak RSS; the test asserts on it.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from . import raw_peer as rp
from .dicom_bytes import VERIFICATION, echo_command, encode, store_command
from .dimse_helpers import CR_IMAGE, ROOT, RssSampler, make_instance, rss_bytes, wait_for
from .hostile_inputs import Case

#: A complete request must be answered within this many seconds.
ANSWER_WITHIN = 2.0
#: How long the battery waits for an answer before calling a case unanswered (so a late
#: answer is measured, not only counted).
WAIT_AT_MOST = 6.0
PENDING = (0xFF00, 0xFF01)
FLOOD_CHUNK = 1 << 20
PROBE_STUDY = f"{ROOT}.8"


@dataclass
class Outcome:
    case: Case
    answer: rp.Answer
    problems: list[str] = field(default_factory=list)
    began: float = 0.0  # monotonic seconds: when the case's connection opened
    ended: float = 0.0


def _rq(contexts: Sequence[rp.Context]) -> bytes:
    return rp.associate_rq(contexts, calling=b"BATTERY")


def _flood(peer: rp.RawPeer, total: int, started: float) -> rp.Answer:
    """Stream zeros until ``total`` bytes or until the node closes or answers."""
    chunk, sent = b"\x00" * FLOOD_CHUNK, 0
    peer.sock.settimeout(WAIT_AT_MOST)
    while sent < total:
        readable, _, _ = select.select([peer.sock], [], [], 0)
        if readable:
            break  # the node said something (an A-ABORT) or closed
        try:
            peer.sock.sendall(chunk)
        except OSError:  # reset, broken pipe, or a full window for WAIT_AT_MOST
            break
        sent += len(chunk)
        if time.monotonic() - started > WAIT_AT_MOST:
            break
    answer = peer.answer(started, WAIT_AT_MOST, until_final=False)
    answer.detail = f"{answer.detail} ({sent >> 20} MiB sent)".strip()
    return answer


def run_case(case: Case, port: int) -> rp.Answer:
    """Send one case on a new connection; the node's answer."""
    with rp.RawPeer(port, timeout=WAIT_AT_MOST) as peer:
        answer = _exchange(case, peer)
        answer.port = peer.port
        return answer


def _exchange(case: Case, peer: rp.RawPeer) -> rp.Answer:
    """Send ``case`` on ``peer``'s connection; the node's answer."""
    if case.kind != "raw":
        accepted = peer.associate(_rq(case.contexts))
        first = case.contexts[0][0]
        if accepted.get(first, (1, b""))[0] != 0:  # the battery's own mistake
            return rp.Answer("none", 0.0, detail=f"setup: context {first} not accepted")
    if case.kind == "dimse":
        payload = _dimse_payload(case)
    else:
        payload = case.payload
    sent = peer.send(payload)
    started = time.monotonic()
    if not sent:
        return rp.Answer("closed", 0.0, detail="(closed while the request was sent)")
    if case.flood:
        return _flood(peer, case.flood, started)
    if case.half_close:
        peer.half_close()
    answer = peer.answer(started, WAIT_AT_MOST, until_final=case.kind == "dimse")
    if answer.kind == "A-ASSOCIATE-AC":
        peer.release()
    return answer


def _dimse_payload(case: Case) -> bytes:
    if case.extra.get("no_command"):
        return b"".join(rp.fragments(case.context_id, b"", case.dataset)[1:])
    pdus = rp.fragments(case.context_id, case.command, case.dataset,
                        command_last=not case.extra.get("command_not_last"))
    if case.extra.get("then_echo"):
        pdus.append(rp.p_data([(1, 0x03, echo_command(message_id=2))]))
    return b"".join(pdus)


def judge(case: Case, answer: rp.Answer) -> list[str]:
    """What is wrong with ``answer`` to ``case`` (empty: nothing)."""
    problems = []
    if not answer.answered or answer.seconds > ANSWER_WITHIN:
        problems.append(f"unanswered within {ANSWER_WITHIN:.0f} s")
    if case.kind == "dimse":
        if answer.kind not in ("response", "A-ABORT", "closed", "none"):
            problems.append(f"answered {answer.kind}")
        final = [s for s in answer.statuses if s not in PENDING]
        if 0x0000 in final and not case.allow_success:
            problems.append("Success for invalid data")
        if len(answer.statuses) > len(final) and not case.allow_success:
            problems.append(f"{len(answer.statuses) - len(final)} C-FIND matches for an "
                            "invalid identifier")
    elif answer.answered and answer.kind not in case.expect:
        problems.append(f"answered {answer.kind}, expected one of {sorted(case.expect)}")
    return problems


# -- what runs beside the cases ------------------------------------------------------------

class Holder(threading.Thread):
    """Keeps ``count`` connections open at the node, half idle (connected, silent) and half
    half-open (two thirds of a PDU header, then silence), reopening those it closes."""

    def __init__(self, port: int, count: int = 40) -> None:
        super().__init__(name="battery-holder", daemon=True)
        self.port, self.count = port, count
        self.stop = threading.Event()
        self.opened = 0
        self.closed_by_node = 0
        self.least_held = count
        self._socks: dict[socket.socket, bool] = {}

    def _open(self, half: bool) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
            if half:
                sock.sendall(b"\x01\x00\x00\x00")
        except OSError:
            return
        sock.setblocking(False)
        self._socks[sock] = half
        self.opened += 1

    def run(self) -> None:
        for index in range(self.count):
            self._open(half=index % 2 == 1)
        measuring_from = time.monotonic() + 1.0
        while not self.stop.is_set():
            socks = list(self._socks)
            readable = select.select(socks, [], [], 0.1)[0] if socks else []
            for sock in readable:
                half = self._socks.pop(sock)
                sock.close()  # closed (or aborted) by the node: open another
                self.closed_by_node += 1
                self._open(half)
            missing = self.count - len(self._socks)
            for index in range(missing):
                self._open(half=index % 2 == 1)
            if time.monotonic() > measuring_from:
                self.least_held = min(self.least_held, len(self._socks))
        for sock in self._socks:
            sock.close()


class Prober(threading.Thread):
    """A good client: about every second a C-ECHO and a C-STORE of a valid instance on a
    new association, each step within ``timeout`` seconds."""

    def __init__(self, port: int, interval: float = 1.0, timeout: float = 5.0) -> None:
        super().__init__(name="battery-prober", daemon=True)
        self.port, self.interval, self.timeout = port, interval, timeout
        self.stop = threading.Event()
        self.probes: list[tuple[float, float, str]] = []  # (start, end, "" or why failed)
        self.stored: list[str] = []

    def probe(self, number: int) -> str:
        # Ten probes to a study, as a modality sends them (one study of a hundred views
        # would make the node's pipeline, not its edge, what the RSS figure shows).
        study = f"{PROBE_STUDY}.{number // 10}"
        sop = f"{study}.1.{number}"
        ds = make_instance(8, 1, number, sop_uid=sop, study_uid=study, series_uid=f"{study}.1")
        try:
            with rp.RawPeer(self.port, timeout=self.timeout) as peer:
                accepted = peer.associate(_rq([(1, VERIFICATION, (ImplicitVRLittleEndian,)),
                                               (3, CR_IMAGE, (ExplicitVRLittleEndian,))]),
                                          within=self.timeout)
                if accepted.get(1, (1,))[0] or accepted.get(3, (1,))[0]:
                    return f"contexts not accepted: {accepted}"
                for name, cid, command, data in (
                        ("C-ECHO", 1, echo_command(message_id=1), None),
                        ("C-STORE", 3, store_command(CR_IMAGE, sop, message_id=2),
                         encode(ds))):
                    peer.send(b"".join(rp.fragments(cid, command, data)))
                    answer = peer.answer(time.monotonic(), self.timeout)
                    if answer.kind != "response" or answer.statuses[-1:] != [0]:
                        return f"{name}: {answer}"
                self.stored.append(sop)
                peer.release()
        except (OSError, AssertionError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return ""

    def run(self) -> None:
        number = 0
        while not self.stop.is_set():
            number += 1
            start = time.monotonic()
            why = self.probe(number)
            self.probes.append((start, time.monotonic(), why))
            self.stop.wait(max(0.0, self.interval - (time.monotonic() - start)))

    def longest_lockout(self) -> float:
        """The longest time from a probe that failed (or any probe's start) until a probe
        succeeded: a slow success counts as a lockout of its duration."""
        worst, locked_since = 0.0, None
        for start, end, why in self.probes:
            if why:
                locked_since = start if locked_since is None else locked_since
                continue
            worst = max(worst, end - (start if locked_since is None else locked_since))
            locked_since = None
        if locked_since is not None and self.probes:
            worst = max(worst, self.probes[-1][1] - locked_since)
        return worst


# -- the run ----------------------------------------------------------------------------------

@dataclass
class Report:
    node: str
    outcomes: list[Outcome]
    seconds: float
    lockout: float
    probes: int
    failed_probes: list[str]
    probes_stored: list[str]
    rss_baseline: int
    rss_peak: int
    rss_samples: int
    least_held: int
    holder_reopened: int
    rss_peak_during: list[str] = field(default_factory=list)  # the cases then running

    @property
    def unanswered(self) -> list[Outcome]:
        return [o for o in self.outcomes if any(p.startswith("unanswered") for p in o.problems)]

    @property
    def failures(self) -> list[str]:
        return [f"{o.case.name}: {'; '.join(o.problems)} [{o.answer}]"
                for o in self.outcomes if o.problems]

    def _by_level(self) -> dict[str, list[Outcome]]:
        groups: dict[str, list[Outcome]] = {}
        for outcome in self.outcomes:
            groups.setdefault(outcome.case.level, []).append(outcome)
        return groups

    def summary(self, levels: dict[str, int], extra: Sequence[str] = ()) -> str:
        ranked = sorted(self.outcomes, key=lambda o: o.answer.seconds)
        slowest, median = ranked[-1], ranked[len(ranked) // 2].answer.seconds
        p95 = ranked[int(len(ranked) * 0.95)].answer.seconds
        lines = [
            f"hostile battery against the {self.node} node: {len(self.outcomes)} cases "
            f"in {self.seconds:.1f} s",
            "  cases per level: " + ", ".join(f"{k} {v}" for k, v in levels.items()),
            f"  unanswered within {ANSWER_WITHIN:.0f} s: {len(self.unanswered)}; answers in "
            f"{median:.2f} s (median), {p95:.2f} s (95th percentile), slowest "
            f"{slowest.answer.seconds:.2f} s ({slowest.case.name})",
            f"  good client: {self.probes} probes, {len(self.failed_probes)} failed, longest "
            f"lockout {self.lockout:.2f} s; holder kept >= {self.least_held} connections "
            f"open ({self.holder_reopened} reopened after the node closed them)",
            f"  RSS: baseline {self.rss_baseline / 2**20:.0f} MiB, peak "
            f"{self.rss_peak / 2**20:.0f} MiB ({self.rss_samples} samples; at the peak: "
            f"{', '.join(self.rss_peak_during[:4]) or 'no case running'})",
            "  seconds per case: " + ", ".join(
                f"{level} {sum(o.ended - o.began for o in group) / len(group):.2f}"
                for level, group in self._by_level().items()),
            *(f"  {line}" for line in extra),
        ]
        return "\n".join(lines)


def run_battery(node: str, port: int, pid: int, cases: Sequence[Case], *,
                workers: int = 4, hold: int = 40,
                between: Callable[[], None] | None = None) -> Report:
    """Run ``cases`` against the node at ``port`` (process ``pid``); the bombs go last,
    one at a time, so each one's cost shows on its own."""
    sampler, holder, prober = RssSampler(pid), Holder(port, hold), Prober(port)
    for thread in (sampler, holder, prober):
        thread.start()
    started, seconds = time.monotonic(), 0.0
    outcomes: list[Outcome] = []

    def one(case: Case) -> Outcome:
        began = time.monotonic()
        try:
            answer = run_case(case, port)
        except (OSError, AssertionError, ValueError) as exc:
            answer = rp.Answer("none", 0.0, detail=f"peer failed: {type(exc).__name__}: {exc}")
        return Outcome(case, answer, judge(case, answer), began, time.monotonic())

    try:
        # The battery runs while the 40 connections are held: the holder has opened them
        # and the node has taken them (a probe queued behind them got through).
        wait_for(lambda: holder.opened >= hold and any(not why for _, _, why in prober.probes),
                 30, "the holder's connections and a first good probe")
        started = time.monotonic()
        ordinary = [c for c in cases if c.level != "bomb"]
        with ThreadPoolExecutor(workers, thread_name_prefix="battery") as pool:
            outcomes.extend(pool.map(one, ordinary))
        for case in cases:
            if case.level == "bomb":
                outcomes.append(one(case))
        seconds = time.monotonic() - started
        if between is not None:
            between()
        # Two more probes after the last case: a node still busy with a bomb shows.
        done = len(prober.probes)
        wait_for(lambda: len(prober.probes) >= done + 2, 20, "two probes after the battery")
    finally:
        for thread in (holder, prober, sampler):
            thread.stop.set()
        for thread in (holder, prober, sampler):
            thread.join(30)
    running = [o.case.name for o in outcomes if o.began <= sampler.peak_at <= o.ended]
    return Report(
        node=node, outcomes=outcomes, seconds=seconds,
        rss_peak_during=running,
        lockout=prober.longest_lockout(), probes=len(prober.probes),
        failed_probes=[why for _, _, why in prober.probes if why],
        probes_stored=list(prober.stored), rss_baseline=sampler.baseline,
        rss_peak=max(sampler.peak, rss_bytes(pid)), rss_samples=sampler.samples,
        least_held=holder.least_held, holder_reopened=holder.closed_by_node)

