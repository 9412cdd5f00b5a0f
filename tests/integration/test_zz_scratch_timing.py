import time, cProfile, pstats, io
from pathlib import Path

def test_timing(pipeline, collection, eval_data, tmp_path):
    from ingestflow import ingest
    p = tmp_path / "a.txt"; p.write_text("hello world " * 10)
    ingest(p, collection=collection)
    pdf = eval_data / "pdfs" / "docling-2206.01062_pg3-password.pdf"
    pr = cProfile.Profile(); pr.enable()
    t = time.perf_counter(); r = ingest(pdf, collection=collection, metadata={"password": "1234"}); print("pdf", time.perf_counter() - t)
    pr.disable()
    s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(45); print(s.getvalue())
