"""Loader speed and peak host memory: gistnet's loader against a streaming reference.

Writes N synthetic 224 px grayscale EUS-like PNGs (each one distinct, so none is dropped as a
duplicate) to a local folder and to a loopback S3 server (moto, in its own process so its
memory is not counted), then loads them with each loader in a fresh process and prints one
JSON line per (source, loader):

- ``gistnet``: ``dataset.load_images`` (decode as objects arrive into one preallocated tensor)
- ``streaming-reference``: a thread pool that reads, decodes (PIL) and writes each image into a
  preallocated numpy array, the simplest loader that never holds more than it must
- ``lists``: the loader before issue 10 (all bytes, then all arrays, in lists; then np.stack)

``peak_over_tensor`` is (peak RSS - RSS just before loading) / bytes of the final tensor.
``--roi auto,none`` runs gistnet's loader once per ``data.roi`` value; ``--repeat N`` runs the
whole list of loaders N times in turn (interleaved: each round sees about the same load from
other jobs) and ends with a summary line: each loader's median img/s and peak/tensor, its
median ratio to the streaming reference of the same round, and the load average before and
after.

``--load-size`` loads them to another ``data.image_size`` than they were written at.

    python benchmarks/bench_load.py --images 20000 [--threads 16] [--sources local,s3] [--roi auto,none] [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

LOADERS = ("gistnet", "streaming-reference", "lists")


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------- data


def distinct_pngs(n: int, size: int, threads: int):
    """(key, PNG bytes) for n distinct images: 64 synthetic bases, each copy with its index
    written into the first row so no two objects share bytes."""
    from PIL import Image

    from gistnet.data import synth

    bases = [np.asarray(Image.open(io.BytesIO(synth.generate(("GIST", "LM")[i % 2], i, size, 0)[0])))
             for i in range(64)]

    def one(i: int) -> tuple[str, bytes]:
        pixels = bases[i % 64].copy()
        pixels[0, :8] = np.frombuffer(i.to_bytes(8, "little"), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buf, format="PNG")
        return f"{('GIST', 'LM')[i % 2]}/{i:06d}.png", buf.getvalue()

    with ThreadPoolExecutor(threads) as pool:
        yield from pool.map(one, range(n))


def write_local(root: Path, n: int, size: int, threads: int) -> None:
    for key, data in distinct_pngs(n, size, threads):
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def start_moto() -> tuple[subprocess.Popen, str]:
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url, timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto server did not start")


def write_s3(url: str, bucket: str, root: Path, threads: int) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=url, config=Config(max_pool_connections=threads))
    client.create_bucket(Bucket=bucket)
    keys = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=f"data/{k}", Body=(root / k).read_bytes()), keys))


# ---------------------------------------------------------------- loaders (each run in its own process)


def load_gistnet(store, cfg):
    import torch

    from gistnet.data import dataset

    return dataset.load_images(store, cfg, torch.device("cpu")).images.images


def load_streaming_reference(store, cfg):
    from PIL import Image, ImageOps

    keys = [k for k in store.list() if k.endswith(".png")]
    out = np.empty((len(keys), cfg.image_size, cfg.image_size), dtype=np.uint8)

    def one(i: int) -> None:
        with Image.open(io.BytesIO(store.read(keys[i]))) as img:
            out[i] = np.asarray(ImageOps.fit(img.convert("L"), (cfg.image_size,) * 2,
                                             method=Image.Resampling.BICUBIC))

    with ThreadPoolExecutor(cfg.download_threads) as pool:
        list(pool.map(one, range(len(keys))))
    return out


def load_lists(store, cfg):
    """The loader as it was before issue 10: every object's bytes, then every array, then a stack."""
    from gistnet.data import dataset

    keys = [k for k in store.list() if k.endswith(".png")]
    raw = store.read_many(keys, cfg.download_threads)
    with ThreadPoolExecutor(cfg.download_threads) as pool:
        arrays = list(pool.map(lambda k: dataset.decode_image(raw[k], cfg.image_size, cfg.max_image_pixels), keys))
    return np.stack(arrays).transpose(0, 3, 1, 2).copy()


def measure_one(loader: str, uri: str, threads: int, size: int, roi: str = "auto") -> dict:
    from PIL import Image, ImageOps  # noqa: F401 - every import before the baseline
    import joblib  # noqa: F401 - dataset.decode_threads's; a training run has it loaded (scikit-learn)
    import torch  # noqa: F401

    from gistnet.data import dataset  # noqa: F401
    from gistnet.config import DataConfig, StorageConfig
    from gistnet.data.storage import open_store

    store = open_store(uri, StorageConfig(), threads)
    cfg = DataConfig(uri=uri, image_size=size, download_threads=threads, min_images_per_class=2, roi=roi)
    store.list()  # warm the client and the listing before the baseline
    baseline = rss_bytes()
    started = time.perf_counter()
    tensor = {"gistnet": load_gistnet, "streaming-reference": load_streaming_reference,
              "lists": load_lists}[loader](store, cfg)
    seconds = time.perf_counter() - started
    nbytes = tensor.numel() * tensor.element_size() if hasattr(tensor, "numel") else tensor.nbytes
    return {"name": f"load/{loader}", "roi": roi, "images": int(tensor.shape[0]), "shape": list(tensor.shape),
            "seconds": round(seconds, 2), "img_per_s": round(tensor.shape[0] / seconds, 1),
            "tensor_mib": round(nbytes / 2**20, 1), "peak_over_baseline_mib": round((peak_rss_bytes() - baseline) / 2**20, 1),
            "peak_over_tensor": round((peak_rss_bytes() - baseline) / nbytes, 2)}


def summary(rows: list[dict]) -> list[dict]:
    """Per (source, loader, roi): median img/s and peak/tensor over the rounds, and the median of
    each round's img/s over the streaming reference's in the same round."""
    from statistics import median

    reference = {(r["source"], r["round"]): r["img_per_s"] for r in rows if r["name"] == "load/streaming-reference"}
    out = []
    for key in dict.fromkeys((r["source"], r["name"], r["roi"]) for r in rows):
        mine = [r for r in rows if (r["source"], r["name"], r["roi"]) == key]
        ratios = [r["img_per_s"] / reference[(r["source"], r["round"])] for r in mine
                  if (r["source"], r["round"]) in reference]
        out.append({"source": key[0], "name": key[1], "roi": key[2] if key[1] != "load/streaming-reference" else "",
                    "rounds": len(mine), "img_per_s": round(median(r["img_per_s"] for r in mine), 1),
                    "peak_over_tensor": round(median(r["peak_over_tensor"] for r in mine), 2),
                    "max_peak_over_tensor": max(r["peak_over_tensor"] for r in mine),
                    "ratio_to_reference": round(median(ratios), 2) if ratios else None})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--image-size", type=int, default=224, help="the images' size in pixels")
    parser.add_argument("--load-size", type=int,
                        help="data.image_size the loaders load them to (default: --image-size, which spares the "
                             "reference any resampling; a smaller one makes every loader resample, as real screens do)")
    parser.add_argument("--threads", type=int, default=16, help="data.download_threads (gistnet's default: 16)")
    parser.add_argument("--sources", default="local,s3")
    parser.add_argument("--loaders", default=",".join(LOADERS))
    parser.add_argument("--roi", default="auto",
                        help="data.roi for gistnet's loaders (auto: the fan mask); a comma list runs each")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the loader list, interleaved")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one loader on --uri
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one, args.uri, args.threads, args.load_size or args.image_size, args.roi)))
        return
    with tempfile.TemporaryDirectory(prefix="gistnet-bench-load-") as tmp:
        root = Path(tmp) / "data"
        started = time.perf_counter()
        write_local(root, args.images, args.image_size, os.cpu_count() or 2)
        print(f"# wrote {args.images} images in {time.perf_counter() - started:.0f}s", file=sys.stderr)
        sources, moto = {}, None
        if "local" in args.sources:
            sources["local"] = str(root)
        if "s3" in args.sources:
            moto, url = start_moto()
            os.environ.update({"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                               "AWS_DEFAULT_REGION": "us-east-1"})
            started = time.perf_counter()
            write_s3(url, "bench", root, args.threads)
            print(f"# uploaded to moto in {time.perf_counter() - started:.0f}s", file=sys.stderr)
            sources["s3"] = "s3://bench/data"
        try:
            runs = [(loader, roi) for loader in args.loaders.split(",")
                    for roi in (args.roi.split(",") if loader == "gistnet" else [args.roi.split(",")[0]])]
            load_before, rows = os.getloadavg(), []
            for source, uri in sources.items():
                for round_ in range(args.repeat):
                    for loader, roi in runs:
                        out = subprocess.run([sys.executable, __file__, "--one", loader, "--uri", uri,
                                              "--threads", str(args.threads), "--image-size", str(args.image_size),
                                              "--load-size", str(args.load_size or args.image_size), "--roi", roi],
                                             capture_output=True, text=True, check=True)
                        result = json.loads(out.stdout.strip().splitlines()[-1])
                        rows.append({"source": source, "round": round_, "threads": args.threads, **result})
                        print(json.dumps(rows[-1]), flush=True)
            if args.repeat > 1 or "," in args.roi:
                print(json.dumps({"summary": summary(rows), "load_average_before": load_before,
                                  "load_average_after": os.getloadavg()}), flush=True)
        finally:
            if moto is not None:
                moto.terminate()
                moto.wait(timeout=30)


if __name__ == "__main__":
    main()
