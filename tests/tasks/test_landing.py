"""Landing drops: atomic copies named by digest, in a folder or an fsspec URL; what is pending."""

import json

from tasks import store
from tasks.landing import land, list_landed, local_copy, pending


def test_landing_twice_writes_one_file_named_by_its_digest(tiny_config, demo_drops):
    cfg = tiny_config()
    first = land(demo_drops[0], cfg)
    again = land(demo_drops[0], cfg)
    assert first.url == again.url
    files = [p for p in cfg.paths.landing.iterdir() if p.is_file()]
    assert [p.name for p in files] == [f"{first.digest[:12]}-month-01.jsonl"]
    assert files[0].read_bytes() == demo_drops[0].read_bytes()
    assert not list(cfg.paths.landing.glob(".*partial"))


def test_an_fsspec_url_lands_and_comes_back_as_a_local_copy(tiny_config, demo_drops, tmp_path):
    bucket = tmp_path / "bucket"
    cfg = tiny_config(f"deploy.landing_url=file://{bucket}/landing")
    landed = land(demo_drops[1], cfg)
    assert (bucket / "landing" / f"{landed.digest[:12]}-month-02.jsonl").exists()
    assert [e["url"] for e in list_landed(cfg)] == [landed.url]
    assert local_copy(landed.url, cfg).read_bytes() == demo_drops[1].read_bytes()


def test_pending_skips_done_and_quarantined_drops_and_keeps_landing_order(tiny_config, demo_drops):
    cfg = tiny_config()
    landed = [land(d, cfg) for d in demo_drops]
    assert pending(cfg) == [x.url for x in landed]
    record = cfg.paths.cycles / f"{landed[0].digest[:16]}.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({}))
    assert pending(cfg) == [x.url for x in landed]  # a cache file alone is no finished cycle
    store.put(cfg, store.CYCLES, record.stem, record)
    rejected = cfg.paths.quarantine / landed[2].digest[:16]
    rejected.mkdir(parents=True)
    (rejected / "REJECTED.md").write_text("bad")
    store.put(cfg, store.QUARANTINE, rejected.name, rejected)
    assert pending(cfg) == [landed[1].url]
