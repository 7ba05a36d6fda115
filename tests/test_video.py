"""Video decoding: frames sampled through decord from bytes equal the same indices of a full decode."""
import numpy as np
import pytest

from modalities.video import decode_size, read_frames, sample_indices

from conftest import ASSETS


def _clip() -> bytes:
    import tarfile
    with tarfile.open(ASSETS / "data" / "video" / "val-000.tar") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".mp4"))
        return tar.extractfile(member).read()


@pytest.mark.parametrize("num_frames, size", [(8, None), (5, 32), (16, 128)])
def test_sampled_frames_equal_full_decode(num_frames, size):
    import io

    import decord
    data = _clip()
    kw = {"width": decode_size(size), "height": decode_size(size)} if size else {}
    vr = decord.VideoReader(io.BytesIO(data), **kw)
    full = vr.get_batch(list(range(len(vr)))).asnumpy()  # every frame, decoded in order
    idx = sample_indices(len(vr), num_frames, vr.get_avg_fps(), None)
    sampled = read_frames(data, num_frames, size)
    assert sampled.shape == (num_frames, *full.shape[1:])
    np.testing.assert_array_equal(sampled, full[idx])


def test_sample_indices_uniform_and_fps():
    assert sample_indices(16, 4, 8.0, None).tolist() == [2, 6, 10, 14]  # segment centres
    assert sample_indices(16, 8, 8.0, 2.0).tolist() == [0, 4, 8, 12]   # 2 fps from an 8 fps clip
    assert sample_indices(3, 6, 8.0, None).tolist() == [0, 0, 1, 1, 2, 2]  # short clip: frames repeat


def test_adapter_preprocess_gives_encoder_size(tiny_vit):
    from modalities import VideoAdapter
    adapter = VideoAdapter(encoder=tiny_vit, num_frames=6)
    item = adapter.preprocess(adapter.decode(_clip(), "mp4"))
    assert item.shape == (6, 3, 32, 32) and item.dtype.is_floating_point
    assert adapter.num_tokens(item) == 6 * 16
