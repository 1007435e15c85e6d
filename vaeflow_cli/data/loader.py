"""The batch loader: shuffled, dequantized batches of a uint8 image array, prepared on a
background thread while the model trains, in a ring of reusable (page-locked) host buffers; the
order of an epoch is a function of (seed, epoch)."""

from __future__ import annotations

import numpy as np

from vaeflow_cli.data.dequantization import dequantize


def epoch_order(n: int, *, seed: int, epoch: int) -> np.ndarray:
    """The shuffled image order of one epoch, a function of (seed, epoch) only."""
    return np.random.Generator(np.random.PCG64([seed, epoch])).permutation(n)


class HostBuffers:
    """A ring of ``count`` reusable host buffers (page-locked when ``pin``) for the loader's
    batches. The producer takes the next buffer with next(); the consumer calls copied(buffer)
    after starting an asynchronous device copy from it, and next() waits for that copy before it
    hands the buffer out again. With a queue of P batches, P + 3 buffers leave the one being
    written, the P queued, the one in use and the one whose copy may still be running."""

    def __init__(self, count: int, *, pin: bool) -> None:
        self.count, self.pin = count, pin
        self.position = 0
        self.tensors: dict[int, object] = {}  # slot -> torch tensor (owns the memory)
        self.events: dict[int, object] = {}  # slot -> CUDA event of the last copy out of it
        self.slot_of: dict[int, int] = {}  # data address -> slot

    def next(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        import torch

        slot = self.position % self.count
        self.position += 1
        event = self.events.pop(slot, None)
        if event is not None:
            event.synchronize()
        tensor = self.tensors.get(slot)
        torch_dtype = torch.uint8 if np.dtype(dtype) == np.uint8 else torch.float32
        if tensor is None or tuple(tensor.shape) != tuple(shape) or tensor.dtype != torch_dtype:
            if tensor is not None:
                self.slot_of.pop(tensor.data_ptr(), None)
            tensor = torch.empty(shape, dtype=torch_dtype, pin_memory=self.pin)
            self.tensors[slot] = tensor
            self.slot_of[tensor.data_ptr()] = slot
        return tensor.numpy()

    def copied(self, array: np.ndarray, stream=None) -> None:
        """Record that a device copy out of ``array`` was issued (on ``stream``, default current)."""
        import torch

        slot = self.slot_of.get(array.ctypes.data)
        if slot is not None and torch.cuda.is_available():
            event = torch.cuda.Event()
            event.record(stream)
            self.events[slot] = event


class BatchLoader:
    """Shuffled, dequantized batches of a uint8 image array (in memory or memory-mapped), prepared
    ``prefetch`` batches ahead on a background thread while the model trains.

    The order of an epoch is a function of (seed, epoch); with ``world_size`` > 1 each rank takes
    every world_size-th image of that order (trimmed so every rank gets as many), so the ranks'
    shards are disjoint and change every epoch. The dequantization noise depends on the image's
    index only, so a batch is the same whichever rank or step it is drawn at. ``wait_seconds``
    adds up how long the consumer waited for data."""

    def __init__(
        self,
        images: np.ndarray,
        *,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        prefetch: int = 2,
        threads: int = 0,
        dequantize: bool = True,
        pin_memory: bool = False,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.images, self.batch_size, self.seed = images, batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.rank, self.world_size = rank, world_size
        self.prefetch, self.threads = max(1, prefetch), threads
        self.dequantize = dequantize  # False: yield the uint8 images (to dequantize on the device)
        self.wait_seconds = 0.0
        # With pin_memory, batches are written into a ring of page-locked host buffers, so that
        # device_epoch() copies them asynchronously; the ring outlives the steps that use a buffer.
        self.buffers = HostBuffers(self.prefetch + 3, pin=True) if pin_memory else None

    def indices(self, epoch: int) -> list[np.ndarray]:
        """The batches of image indices this rank draws in ``epoch``."""
        n = len(self.images)
        order = epoch_order(n, seed=self.seed, epoch=epoch) if self.shuffle else np.arange(n)
        if self.world_size > 1:
            order = order[: n - n % self.world_size][self.rank :: self.world_size]
        stop = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
        return [order[i : i + self.batch_size] for i in range(0, stop, self.batch_size)]

    def __len__(self) -> int:
        per_rank = len(self.images) // self.world_size if self.world_size > 1 else len(self.images)
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def _make(self, idx: np.ndarray, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(self.images, np.memmap):  # read the memory map in file order, then reorder
            x = self.images[np.sort(idx)][np.argsort(np.argsort(idx))]
        else:
            x = self.images[idx]
        if not self.dequantize:
            if self.buffers is None:
                return idx, np.ascontiguousarray(x)
            out = self.buffers.next(x.shape, np.uint8)
            out[...] = x
            return idx, out
        out = None if self.buffers is None else self.buffers.next(x.shape, np.float32)
        return idx, dequantize(x, seed=self.seed, epoch=epoch, indices=idx, threads=self.threads, out=out)

    def device_batches(self, device):
        """Batches (indices, images) on ``device`` without end, epoch after epoch (0, 1, ...):
        what benchmarks step through."""
        epoch = 0
        while True:
            yield from self.device_epoch(epoch, device)
            epoch += 1

    def device_epoch(self, epoch: int, device, *, start: int = 0):
        """``epoch`` with the batches already on ``device``: on CUDA the copy of batch k+1 is issued
        on a side stream before batch k is handed out, so host-to-device transfer overlaps the
        compute of step k; the compute stream waits for each batch's own copy only."""
        import torch

        device = torch.device(device)
        host = self.epoch(epoch, start=start)
        if device.type != "cuda":
            try:
                for idx, batch in host:
                    yield idx, torch.from_numpy(batch).to(device)
            finally:
                host.close()  # ends the producer now, not when the generator is collected
            return
        stream = torch.cuda.Stream(device)

        def issue(batch):
            with torch.cuda.stream(stream):
                moved = torch.from_numpy(batch).to(device, non_blocking=True)
                done = torch.cuda.Event()
                done.record(stream)
            if self.buffers is not None:
                self.buffers.copied(batch, stream)
            return moved, done

        pending = None
        try:
            for idx, batch in host:
                ready = (idx, *issue(batch))
                if pending is not None:
                    yield self._hand_over(pending)
                pending = ready
            if pending is not None:
                yield self._hand_over(pending)
        finally:
            host.close()

    @staticmethod
    def _hand_over(item):
        import torch

        idx, moved, done = item
        current = torch.cuda.current_stream(moved.device)
        current.wait_event(done)
        moved.record_stream(current)  # the allocator must not reuse it before compute is done
        return idx, moved

    def epoch(self, epoch: int, *, start: int = 0):
        """Yield (indices (B,), batch (B, C, H, W)) for steps start, start+1, ... of ``epoch``; the
        batch is float32 in [0, 1), or the uint8 images when ``dequantize`` is False."""
        import queue
        import threading
        import time

        batches = self.indices(epoch)[start:]
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def offer(item) -> bool:
            """Put ``item`` unless the consumer has left; every put is bounded, so the producer ends
            within 0.1 s of ``stop`` whatever the queue holds (a consumer that leaves while the
            queue is full must not block the end-of-epoch marker or an error forever)."""
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce():
            try:
                for idx in batches:
                    if stop.is_set() or not offer(self._make(idx, epoch)):
                        return
                offer(None)
            except BaseException as exc:  # hand the error to the consumer
                offer(exc)

        worker = threading.Thread(target=produce, name="vaeflow-loader", daemon=True)
        worker.start()
        try:
            while True:
                t = time.perf_counter()
                item = q.get()
                self.wait_seconds += time.perf_counter() - t
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            worker.join()
