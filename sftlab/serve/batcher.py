"""Batching across concurrent clients: handlers put requests on a queue; one worker thread takes every request
waiting with the same sampling parameters (up to max_batch_size rows) and answers them with one generate call.

max_batch_size=1 serves strictly one request at a time (the baseline the benchmark compares against).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from sftlab.infer import GenerationParams, Generator, Reply


@dataclass
class Job:
    conversation: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    params: GenerationParams
    on_text: Callable[[int, str], bool] | None = None  # (choice, new text) -> still wanted? (streaming clients)
    future: Future = field(default_factory=Future)

    def key(self) -> str:
        """Jobs with equal keys can share a generate call (n may differ: it only repeats rows)."""
        params = dataclasses.replace(self.params, n=1)
        return json.dumps([dataclasses.asdict(params), self.tools], sort_keys=True)


class Batcher:
    def __init__(self, generator: Generator, max_batch_size: int = 32, max_wait_ms: float = 5.0) -> None:
        self.generator = generator
        self.max_batch_size = max(1, max_batch_size)
        self.max_wait_s = max_wait_ms / 1000
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.pending: list[Job] = []
        self.batches = 0
        self.rows = 0
        self.thread = threading.Thread(target=self._run, name="sftlab-batcher", daemon=True)
        self.thread.start()

    async def submit(self, conversation: list[dict], tools: list[dict] | None, params: GenerationParams,
                     on_text: Callable[[int, str], bool] | None = None) -> list[Reply]:
        """Wait for this request's replies. Cancelling the await (a client that went away) drops the job if it
        has not started yet. on_text(choice, text) receives the text as it is generated where the backend
        streams (hf); returning False stops that choice."""
        job = Job(conversation, tools, params, on_text)
        self.queue.put(job)
        return await asyncio.wrap_future(job.future)

    def waiting(self) -> int:
        return self.queue.qsize() + len(self.pending)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=10)

    def _take(self, block: bool, timeout: float | None = None) -> bool:
        """Move queued jobs to pending; False when asked to stop."""
        try:
            while True:
                job = self.queue.get(block=block, timeout=timeout)
                if job is None:
                    return False
                self.pending.append(job)
                block = False
        except queue.Empty:
            return True

    def _run(self) -> None:
        while True:
            if not self.pending and not self._take(block=True):
                return
            # A short wait lets requests that arrive together (clients answered by the last batch) share a batch.
            if self.max_batch_size > 1 and self.max_wait_s > 0:
                deadline = time.monotonic() + self.max_wait_s
                while self._rows(self.pending) < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
                    if not self._take(block=True, timeout=left):
                        return
            elif not self._take(block=False):
                return
            self.pending = [j for j in self.pending if not j.future.cancelled()]
            if not self.pending:
                continue
            batch = self._next_batch()
            self._answer(batch)

    @staticmethod
    def _rows(jobs: list[Job]) -> int:
        return sum(j.params.n for j in jobs)

    def _next_batch(self) -> list[Job]:
        """The oldest job and the jobs after it with the same key, up to max_batch_size rows (oldest first)."""
        key = self.pending[0].key()
        batch, rest, rows = [], [], 0
        for job in self.pending:
            if job.key() == key and (not batch or rows + job.params.n <= self.max_batch_size):
                batch.append(job)
                rows += job.params.n
            else:
                rest.append(job)
        self.pending = rest
        return batch

    def _answer(self, batch: list[Job]) -> None:
        batch = [j for j in batch if j.future.set_running_or_notify_cancel()]
        if not batch:
            return
        params = dataclasses.replace(batch[0].params, n=1)
        uniform = len({j.params.n for j in batch}) == 1
        if uniform:
            params.n = batch[0].params.n
        # generate's rows: conversation index * n + choice; with mixed n every choice is its own conversation
        owners = [(j, k) for j in batch for k in range(j.params.n)]
        extra: dict[str, Any] = {}
        if getattr(self.generator, "streams", False) and any(j.on_text for j in batch):
            def on_text(row: int, text: str) -> bool:
                job, k = owners[row]
                return job.on_text(k, text) if job.on_text else True

            extra["on_text"] = on_text
        try:
            if uniform:
                replies = self.generator.generate([j.conversation for j in batch], params, tools=batch[0].tools,
                                                  **extra)
            else:  # mixed n: one row per sample, regrouped below
                convs = [j.conversation for j, _ in owners]
                flat = [r[0] for r in self.generator.generate(convs, params, tools=batch[0].tools, **extra)]
                replies, start = [], 0
                for j in batch:
                    replies.append(flat[start:start + j.params.n])
                    start += j.params.n
        except Exception as error:
            if len(batch) == 1:
                batch[0].future.set_exception(error)
                return
            replies = None
        self.batches += 1
        self.rows += self._rows(batch)
        if replies is None:  # one bad request must not fail the others: answer them one by one
            for job in batch:
                try:
                    job.future.set_result(self.generator.generate([job.conversation], job.params, job.tools)[0])
                except Exception as e:
                    job.future.set_exception(e)
            return
        for job, reply in zip(batch, replies, strict=True):
            job.future.set_result(reply)

