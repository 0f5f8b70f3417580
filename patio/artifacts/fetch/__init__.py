"""The fetch engine: a listing of remote files -> a complete, verified local directory.

engine.py     ``fetch()``: parallel ranged parts, resume, atomic files, the manifest last
net.py        blocking HTTP with pooled connections and timeouts (loaded on first download)
retry.py      network settings and the bounded retry loop
listing.py    ``Source`` / ``RemoteFile`` and the checks every listing passes
manifest.py   on-disk bookkeeping: manifest, journal, part state, atomic writes
verify.py     size and digest checks
progress.py   counters, snapshots and the progress log line
"""
