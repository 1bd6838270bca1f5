"""Fuzzing a real dispynode's port (hardening item 8): thousands of hostile inputs before authentication, then
the node must be alive, serve a genuine client, have logged no traceback, have unpickled nothing, and have
kept its memory bounded.

The sans-I/O Session is fuzzed in tests/unit; this file fuzzes what lies around it in a real process: the
transport's reads, the 5 s handshake deadline, the bound on connections proving the secret, the logging of
refusals. "Unpickled nothing" is measured, not assumed: the node runs with ``unpickle_probe/sitecustomize.py``,
which records every unpickling in the node and in every process it starts, and unpickles once at start-up
so that the record of a live probe is there to see. A pickle that makes a directory when loaded rides in
every blob, as a second witness.
"""

from __future__ import annotations

import os
import pickle
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nodefuzz import (
    CLOSE_WITHIN,
    STRAY_TYPES,
    Outcome,
    Tally,
    after_challenge,
    auth_frame,
    authenticate,
    biggest_partial_hello,
    burst,
    canary_blob,
    check_refusal,
    genuine_hello,
    header_cases,
    held_open,
    hello_frame,
    hello_nonce,
    hold,
    probe,
    probe_env,
    proof,
    random_cases,
    rss_peak,
    run_bulk,
    sample_message,
    stray_frames,
    unpickle_records,
)

import dispy
from dispy_core.errors import PeerClosedError
from dispy_core.protocol import messages as m
from dispy_core.protocol.codec import encode_frame
from dispy_core.protocol.session import NONCE_SIZE, secret_key
from dispy_core.testing.nodes import NodeProcess
from dispy_core.testing.waiting import wait_for

SECRET = "fuzz-secret"
WRONG = "not-the-secret"
SEED = int(os.environ.get("DISPY_FUZZ_SEED", "20261201"))
RSS_GROWTH_LIMIT = 64 * 2**20
BULK = {"random bytes": 4000, "frame headers": 4000, "stray messages first": 1000}
HYPOTHESIS_EXAMPLES = {"hello mutations": 1500, "hello fields": 500, "auth stage": 800}
REPLAYS = 60  # per kind of replay
BURSTS = 3  # rounds of 96 connections at once, above the node's 64 proving the secret
HELD = 60  # connections at once, each holding a 64 KiB partial Hello (the most a node buffers before auth)


def hypothesis_settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def take(cases: Iterator[bytes], n: int) -> list[bytes]:
    """The first ``n`` cases of an endless generator (made before sending: a failure names its index)."""
    return [next(cases) for _ in range(n)]


# --------------------------------------------------------------------------- phases
def fuzz_hello_mutations(port: int, tally: Tally) -> None:
    """A genuine Hello, truncated, bit-flipped, overwritten, cut or spliced: hypothesis picks where."""
    hello = genuine_hello()
    n = len(hello)

    def flip(flips: list[tuple[int, int]]) -> bytes:
        data = bytearray(hello)
        for pos, bit in flips:
            data[pos] ^= 1 << bit
        return bytes(data)

    mutated = st.one_of(
        st.integers(0, n - 1).map(lambda k: hello[:k]),
        st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 7)), min_size=1, max_size=8).map(flip),
        st.tuples(st.integers(0, n - 1), st.integers(0, 255)).map(lambda t: hello[: t[0]] + bytes([t[1]])
                                                                   + hello[t[0] + 1 :]),
        st.tuples(st.integers(0, n), st.binary(min_size=1, max_size=64)).map(lambda t: hello[: t[0]] + t[1]
                                                                             + hello[t[0] :]),
        st.tuples(st.integers(0, n), st.integers(1, 40)).map(lambda t: hello[: t[0]] + hello[t[0] + t[1] :]),
        st.binary(min_size=1, max_size=200).map(lambda tail: hello + tail),
        st.integers(2, 40).map(lambda k: hello * k),
    )

    @hypothesis_settings(HYPOTHESIS_EXAMPLES["hello mutations"])
    @given(data=mutated)
    def one(data: bytes) -> None:
        with tally.case("hello mutations", data):
            expect_refusal(probe(port, data), data)

    one()


def fuzz_hello_fields(port: int, tally: Tally) -> None:
    """Hellos that parse, with fields no client sends: short or long nonces, strange versions and names."""
    json_text = st.text(max_size=300) | st.text(max_size=20_000, alphabet="é\x00\u2028\udcff")

    @hypothesis_settings(HYPOTHESIS_EXAMPLES["hello fields"])
    @given(nonce=st.binary(max_size=80) | st.just(b"\0" * NONCE_SIZE), role=json_text, name=json_text,
           versions=st.lists(st.integers(), max_size=50), software=json_text)
    def one(nonce: bytes, role: str, name: str, versions: list[int], software: str) -> None:
        data = hello_frame(nonce=nonce, role=role, name=name, versions=versions, software=software)
        with tally.case("hello fields", data):
            messages = expect_refusal(probe(port, data), data)
            challenged = any(isinstance(msg, m.Challenge) for msg in messages)
            assert not challenged or len(nonce) == NONCE_SIZE, "a Hello with a bad nonce got a Challenge"
            assert not challenged or 1 in versions, "no common version, yet a Challenge"

    one()


AUTH_KINDS = ["wrong secret", "random proof", "flipped", "truncated", "with a MAC", "echo server proof",
              "right secret, other nonces", "stray message", "hello again", "auth ok", "error"]
"""What a peer that does not know the secret can answer to a genuine Challenge."""


def fuzz_auth_stage(port: int, tally: Tally, blob: bytes) -> None:
    """A genuine Hello, the node's genuine Challenge, then an Auth that must fail (or something else)."""

    @hypothesis_settings(HYPOTHESIS_EXAMPLES["auth stage"])
    @given(kind=st.sampled_from(AUTH_KINDS), noise=st.binary(max_size=96), pos=st.integers(0, 10_000),
           bit=st.integers(0, 7), seed=st.integers(0, 2**32))
    def one(kind: str, noise: bytes, pos: int, bit: int, seed: int) -> None:
        hello = genuine_hello()
        nc = hello_nonce(hello)
        sent: list[bytes] = []

        def answer(challenge: m.Challenge) -> bytes:
            data = auth_answer(kind, challenge, nc, noise, pos, bit, random.Random(seed), blob)
            sent.append(data)
            tally.last = hello + data
            return data

        says_why = kind in ("wrong secret", "echo server proof", "right secret, other nonces")
        with tally.case("auth stage", hello):
            outcome, challenged = after_challenge(port, hello, answer, linger=CLOSE_WITHIN if says_why else 0.0)
            assert challenged, "a genuine Hello got no Challenge"
            messages = expect_refusal(outcome, hello + b"".join(sent))
            if says_why:
                assert outcome.end == "eof" and messages[-1] == m.Error("auth", "authentication failed"), messages

    one()


def auth_answer(kind: str, challenge: m.Challenge, nc: bytes, noise: bytes, pos: int, bit: int,
                rng: random.Random, blob: bytes) -> bytes:
    """The bytes a peer without the secret sends instead of a valid Auth."""
    wrong = auth_frame(WRONG, challenge, nc)
    key = secret_key(SECRET)
    framed: Callable[[m.Message], bytes] = lambda msg: encode_frame(msg, seq=0, serializer="", mac_key=None)
    if kind == "wrong secret":
        return wrong
    if kind == "random proof":
        return framed(m.Auth(proof=noise))
    if kind == "flipped":
        i = pos % len(wrong)
        return wrong[:i] + bytes([wrong[i] ^ (1 << bit)]) + wrong[i + 1 :]
    if kind == "truncated":
        return wrong[: pos % len(wrong)]
    if kind == "with a MAC":
        return encode_frame(m.Auth(proof=noise), seq=0, serializer="", mac_key=noise or bytes(32))
    if kind == "echo server proof":  # reflection: the node's own proof handed back as ours
        return framed(m.Auth(proof=challenge.proof))
    if kind == "right secret, other nonces":  # a proof that was valid for another connection
        return framed(m.Auth(proof=proof(key, b"dispy-client", nc, os.urandom(NONCE_SIZE))))
    if kind == "stray message":
        msg = sample_message(rng.choice(STRAY_TYPES), rng, blob)
        return encode_frame(msg, seq=0, serializer="pickle", mac_key=rng.choice([None, noise]))
    if kind == "hello again":
        return genuine_hello()
    if kind == "auth ok":
        return encode_frame(m.AuthOk(name="x"), seq=0, serializer="", mac_key=noise or None)
    return framed(m.Error(code="auth", message=noise.hex()))


def expect_refusal(outcome: Outcome, data: bytes) -> list[m.Message]:
    """``check_refusal`` with the input in the message, so hypothesis' report and ours both name it."""
    try:
        return check_refusal(outcome)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n  input hex: {data.hex()}") from None


def replay_handshake(port: int, tally: Tally) -> list[bytes]:
    """Record a genuine client's bytes, then replay them: whole, the Auth after a fresh Challenge, the Auth or
    the MAC'd frames alone. Each must be refused (the node's fresh nonce makes an old proof worthless).
    Returns the recorded frames sent after authentication, for the replays on authenticated sessions."""
    genuine = authenticate(port, SECRET)
    with genuine.sock:
        genuine.send(m.NodeInfoRequest(req_id=1))
        wait_for(lambda: any(isinstance(msg, m.NodeInfo) for msg in genuine.receive()), timeout=10)
        genuine.send(m.Ping(req_id=2))
    hello, auth, *after = genuine.sent
    whole = b"".join(genuine.sent)
    for _ in range(REPLAYS):
        for kind, data in (("whole", whole), ("auth alone", auth), ("after-auth frames alone", b"".join(after))):
            with tally.case(f"replay: {kind}", data):
                outcome = probe(port, data, linger=CLOSE_WITHIN if kind == "whole" else 0.0)
                messages = expect_refusal(outcome, data)
                if kind == "whole":  # the node hung up by itself, and said why
                    assert outcome.end == "eof" and [type(msg) for msg in messages] == [m.Challenge, m.Error], messages
                    assert messages[1] == m.Error("auth", "authentication failed"), messages
        with tally.case("replay: recorded auth after a fresh challenge", auth):
            outcome, challenged = after_challenge(port, genuine_hello(), lambda _challenge: auth, linger=CLOSE_WITHIN)
            assert challenged
            messages = expect_refusal(outcome, auth)
            assert outcome.end == "eof" and messages[-1] == m.Error("auth", "authentication failed"), messages
    return after


def abuse_authenticated(port: int, tally: Tally, recorded: list[bytes], blob: bytes) -> None:
    """After authentication: another session's MAC'd frames replayed, and frames without a MAC. The node must
    drop the connection and say why (its farewell), and still unpickle nothing."""
    rng = random.Random(SEED + 1)
    for i in range(REPLAYS):
        client = authenticate(port, SECRET)
        with client.sock:
            if i % 2:
                kind, data = "replayed frames of another session", b"".join(recorded)
            else:
                msg = sample_message(m.JobSubmit, rng, blob)
                kind, data = "JobSubmit without a MAC", encode_frame(msg, seq=0, serializer="pickle", mac_key=None)
            tally.add(f"after auth: {kind}")
            client.sock.sendall(data)
            with pytest.raises(PeerClosedError, match="MAC"):
                for _ in range(5):
                    client.receive()


def deadline_watchers(port: int) -> dict[str, Callable[[], Outcome]]:
    """Peers the 5 s handshake deadline must end: silent, half a Hello, a Hello dripped a byte at a time, and
    a Hello never followed by an Auth."""
    hello = genuine_hello()
    return {
        "silent": lambda: hold(port, [], 0.0),
        "half a hello": lambda: hold(port, [hello[:20]], 0.0),
        "a byte every 0.25 s": lambda: hold(port, [hello[i : i + 1] for i in range(len(hello))], 0.25),
        "hello, then silent": lambda: hold(port, [hello], 0.0),
    }


@dataclass
class Fuzzed:
    """What the phases before authentication measured, beside the tally."""

    recorded: list[bytes]  # a genuine client's frames after its handshake, for replays
    bursts: list[tuple[int, int]]  # (challenged, refused) per round of 96
    held: list[int]  # partial 64 KiB frames still held open per round of HELD
    deadlines: dict[str, Outcome]
    rss_peak: int


def fuzz_before_auth(port: int, proc: psutil.Process, tally: Tally, blob: bytes) -> Fuzzed:
    """Every kind of input in turn on one node, so that what one kind leaves behind (memory, sockets, a
    half-parsed state, a log flood) is there for the next; peers the deadline must end run meanwhile."""
    rng = random.Random(SEED)
    fds_before = proc.num_fds()

    def settled() -> None:
        """Until the node has closed the last round's connections (they count as proving the secret until then)."""
        wait_for(lambda: proc.num_fds() <= fds_before + 8, timeout=10)

    with rss_peak(proc) as peak, ThreadPoolExecutor(4) as watchers:
        held = {name: watchers.submit(fn) for name, fn in deadline_watchers(port).items()}
        run_bulk(port, "random bytes", take(random_cases(rng), BULK["random bytes"]), tally, workers=32)
        run_bulk(port, "frame headers", take(header_cases(rng), BULK["frame headers"]), tally, workers=32)
        run_bulk(port, "stray messages first", take(stray_frames(rng, blob), BULK["stray messages first"]), tally)
        assert not tally.failures, f"seed {SEED}:\n{tally.report()}"
        fuzz_hello_mutations(port, tally)
        fuzz_hello_fields(port, tally)
        fuzz_auth_stage(port, tally, blob)
        recorded = replay_handshake(port, tally)
        bursts = []
        for _ in range(BURSTS):
            settled()
            bursts.append(burst(port, 96))
        tally.add("burst connections", 96 * BURSTS)
        partial = biggest_partial_hello()
        held_big = []
        for _ in range(BURSTS):
            settled()
            held_big.append(held_open(port, partial, HELD, 0.5))
        tally.add("held 64 KiB partial frames", HELD * BURSTS)
        deadlines = {name: future.result() for name, future in held.items()}
    return Fuzzed(recorded, bursts, held_big, deadlines, peak[0])


# --------------------------------------------------------------------------- the test
@pytest.mark.timeout(180)
def test_fuzzing_a_node_before_authentication(node_factory: Callable[..., NodeProcess], tmp_path: Path) -> None:
    """Afterwards the node is alive, serves a genuine client, logged no traceback, unpickled nothing (the node
    process, ever; any process, before authentication) and its memory grew by less than RSS_GROWTH_LIMIT."""
    started = time.monotonic()
    unpickled = tmp_path / "unpickled.log"
    canary = tmp_path / "canary"  # made if anything loads a blob we sent
    blob = canary_blob(canary)
    witness = tmp_path / "witness"
    pickle.loads(canary_blob(witness))  # our own bytes: shows that loading the canary would leave a trace
    assert witness.is_dir()
    node = node_factory(secret=SECRET, env=probe_env(unpickled))
    pid = node.proc.pid
    proc = psutil.Process(pid)
    assert unpickle_records(unpickled).count((pid, "selftest")) == 1, "the unpickle probe is not live in the node"
    rss_before, fds_before = proc.memory_info().rss, proc.num_fds()
    tally = Tally(alive=lambda: node.proc.poll() is None)
    fuzzed = fuzz_before_auth(node.port, proc, tally, blob)
    rss_after = proc.memory_info().rss
    pre_auth = unpickle_records(unpickled)

    print(f"\nfuzzed {sum(tally.counts.values())} cases in {time.monotonic() - started:.1f} s: {tally.counts}")
    print(f"bursts of 96 (challenged, refused): {fuzzed.bursts}; {HELD} partial frames held, still open: "
          f"{fuzzed.held}")
    print("deadline: " + ", ".join(f"{name} closed after {o.seconds:.2f} s ({o.end})"
                                   for name, o in fuzzed.deadlines.items()))
    print(f"node RSS: {rss_before / 2**20:.1f} MiB before, {fuzzed.rss_peak / 2**20:.1f} MiB peak, "
          f"{rss_after / 2**20:.1f} MiB after; fds {fds_before} before, {proc.num_fds()} after")

    assert not tally.failures, f"seed {SEED}:\n{tally.report()}"
    assert node.proc.poll() is None, f"the node died:\n{node.log()[-3000:]}"
    assert [r for r in pre_auth if r[1] != "selftest"] == [], f"unpickled before authentication: {pre_auth}"
    assert not canary.exists(), "a blob sent before authentication was unpickled"
    assert rss_after - rss_before < RSS_GROWTH_LIMIT, (rss_before, rss_after)
    for challenged, refused in fuzzed.bursts:
        assert challenged <= 64 and refused >= 96 - 64, fuzzed.bursts
    assert fuzzed.held == [HELD] * BURSTS, fuzzed.held  # held, not dropped: the node did buffer them all
    for name, outcome in fuzzed.deadlines.items():
        assert outcome.end != "timeout" and outcome.seconds < 5.0 + 2.0, (name, outcome)
    wait_for(lambda: proc.num_fds() <= fds_before + 4, timeout=10)  # every refused connection's socket closed

    abuse_authenticated(node.port, tally, fuzzed.recorded, blob)
    with dispy.JobCluster(abs, nodes=[dispy.NodeAllocate("127.0.0.1", port=node.port)], secret=SECRET,
                          recover_file=str(tmp_path / "recover")) as cluster:
        job = cluster.submit(-7)
        assert job is not None and job(timeout=30) == 7, (job and job.exception, node.log()[-3000:])
    print(f"whole test {time.monotonic() - started:.1f} s")

    log = node.log()
    for word in ("Traceback", "Exception", " ERROR "):
        assert word not in log, f"{word!r} in the node's log:\n{log[-5000:]}"
    records = unpickle_records(unpickled)
    assert [r for r in records if r[0] == pid and r[1] != "selftest"] == [], "the node process unpickled"
    assert not canary.exists()
    assert any(r[0] != pid and r[1] != "selftest" for r in records), (
        "the job's processes unpickled nothing: is the probe blind?")
