"""Face detection and tracking cost: ms per detected frame and per tracked minute.

    python benchmarks/face_detect.py                 # 1 torch thread
    python benchmarks/face_detect.py --threads 2 --repeats 5 --batch 8
    python benchmarks/face_detect.py --device cuda

Frames are built from ``skimage.data.astronaut()`` (1, 2 or 4 copies of the head on the
``data.coffee()`` photo as background) at 640x360 (a 360p source, scale 1) and at
1280x720 downscaled to 640x360 (a 720p source, scale 0.5, so ``min_face`` = 40 source
pixels becomes 20 image pixels and MTCNN's pyramid gets deeper). Each row gives the faces
found (a check), ms per frame detected one at a time, ms per frame in a batch of
``--batch`` same-size frames, and the same with ``with_features=False``. Then the cost
of :func:`avse.video.track.thumbnail` + :func:`is_shot_cut` per 1280x720 frame and of
:func:`track_faces` on one minute of synthetic detections (3 faces, one cut every 10 s),
and the face-frame pass per frame (decode, gray, :func:`cut_face`) with the luma gray and
with the ``lipread`` preset's gray through RGB (``gray_frame(method="rgb")``).
Prints numbers; asserts nothing.
"""
import argparse
import time

import numpy as np


def _rgb(img, h, w):
    from skimage.transform import resize

    return (resize(img, (h, w), anti_aliasing=True) * 255).round().astype(np.uint8)


def make_frame(n_faces: int, h: int, w: int) -> np.ndarray:
    """``[h, w, 3]`` uint8: ``n_faces`` astronaut heads side by side on the coffee photo."""
    from skimage import data

    frame = _rgb(data.coffee(), h, w)
    head = data.astronaut()[10:250, 105:345]  # 240 x 240 around the face
    side = int(h * 0.45) if n_faces < 4 else int(w / 4.5)
    head = _rgb(head, side, side)
    gap = (w - n_faces * side) // (n_faces + 1)
    y = (h - side) // 2
    for i in range(n_faces):
        x = gap + i * (side + gap)
        frame[y:y + side, x:x + side] = head
    return frame


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_detector(args):
    from avse.video.detect import FaceDetector

    det = FaceDetector(min_face=args.min_face, device=args.device)
    rng = np.random.default_rng(0)
    print(f"MTCNN on {args.device}, {args.threads} torch thread(s), "
          f"min_face {args.min_face} source px, best of {args.repeats}")
    print(f"{'source':>10} {'faces':>5} {'found':>5} {'single ms':>10} "
          f"{'batch' + str(args.batch) + ' ms/frame':>18} {'no features':>12}")
    for name, (h, w) in (("360p", (360, 640)), ("720p->640", (720, 1280))):
        for n in (1, 2, 4):
            src = make_frame(n, h, w)
            img = src if w == 640 else _rgb(src, 360, 640)
            scale = 640 / w
            frames = [np.clip(img.astype(int) + rng.integers(-2, 3, img.shape), 0, 255)
                      .astype(np.uint8) for _ in range(args.batch)]
            found = len(det.detect([img], [scale])[0])
            single = _time(lambda: [det.detect([f], [scale]) for f in frames], args.repeats)
            batch = _time(lambda: det.detect(frames, [scale] * len(frames)), args.repeats)
            nofeat = _time(lambda: det.detect(frames, [scale] * len(frames), with_features=False),
                           args.repeats)
            k = 1000 / len(frames)
            print(f"{name:>10} {n:>5} {found:>5} {single * k:>10.1f} {batch * k:>18.1f} "
                  f"{nofeat * k:>12.1f}")


def bench_tracking(args):
    from avse.video.detect import Detections
    from avse.video.track import is_shot_cut, thumbnail, track_faces

    gray = make_frame(2, 720, 1280).mean(axis=2).astype(np.uint8)
    prev = thumbnail(gray)
    t = _time(lambda: is_shot_cut(prev, thumbnail(gray)), args.repeats)
    print(f"\nthumbnail + is_shot_cut on 1280x720: {t * 1000:.2f} ms/frame")

    fps, n_frames = 25, 25 * 60
    cuts = list(range(250, n_frames, 250))
    rng = np.random.default_rng(0)
    feats = rng.random((3, 125)).astype(np.float32)
    dets = {}
    for k in sorted(set(range(0, n_frames, 5)) | set(cuts)):
        cx = np.array([200.0, 640, 1080]) + 20 * np.sin(k / 50 + np.arange(3))
        boxes = np.stack([cx - 60, np.full(3, 200.0), cx + 60, np.full(3, 350.0)], 1)
        boxes += rng.normal(0, 2, boxes.shape)
        lms = np.repeat(boxes[:, None, :2], 5, axis=1) + 30
        dets[k] = Detections(boxes.astype(np.float32), np.full(3, 0.99, np.float32),
                             lms.astype(np.float32), feats)
    t = _time(lambda: track_faces(dets, n_frames, cuts=cuts, fps=fps), args.repeats)
    n = len(track_faces(dets, n_frames, cuts=cuts, fps=fps))
    print(f"track_faces, 1 min (3 faces, a cut every 10 s, {len(dets)} detection frames): "
          f"{t * 1000:.1f} ms -> {n} tracks")


def bench_face_frames(args, n_frames: int = 50):
    """ms per frame of write_face_frames' loop: decode only, + luma gray + cut, + RGB gray + cut."""
    import os
    import tempfile

    import av

    from avse.video.crops import cut_face
    from avse.video.frames import gray_frame, iter_video, probe

    print("\nface-frame pass (H.264 yuv420p, one 224x224 face cut per frame), ms per frame:")
    print(f"{'source':>10} {'decode':>7} {'+luma':>7} {'+rgb':>7} {'rgb extra':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for h, w in ((360, 640), (720, 1280), (1080, 1920)):
            path = os.path.join(tmp, f"{h}.mp4")
            base = make_frame(2, h, w)
            with av.open(path, "w") as out:
                st = out.add_stream("libx264", rate=25)
                st.width, st.height, st.pix_fmt = w, h, "yuv420p"
                for k in range(n_frames):
                    for p in st.encode(av.VideoFrame.from_ndarray(np.roll(base, 3 * k, 1), format="rgb24")):
                        out.mux(p)
                for p in st.encode():
                    out.mux(p)
            info, window = probe(path), (w * 0.3, h * 0.5, h * 0.45)

            def run(method):
                for _, frame in iter_video(path, info=info):
                    if method:
                        cut_face(gray_frame(frame, 0, method=method), window)

            ms = {m: _time(lambda m=m: run(m), args.repeats) * 1000 / n_frames for m in (None, "luma", "rgb")}
            print(f"{f'{w}x{h}':>10} {ms[None]:>7.2f} {ms['luma']:>7.2f} {ms['rgb']:>7.2f} "
                  f"{ms['rgb'] - ms['luma']:>10.2f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=8, help="frames per batched call")
    p.add_argument("--min-face", type=int, default=40, help="source pixels")
    p.add_argument("--device", default="cpu", help="torch device of MTCNN (cpu, cuda)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    bench_detector(args)
    bench_tracking(args)
    bench_face_frames(args)


if __name__ == "__main__":
    main()
