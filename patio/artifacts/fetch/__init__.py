"""Fetching: a listing of remote files -> a complete, verified local directory.

run.py        ``fetch()``: list, plan, transfer in parallel, the manifest last
plan.py       what a run must do: the files to fetch, keep and remove; the space it needs
workers.py    the worker threads, progress reports, the first error
transfer.py   one ranged part into its file; a file verified and renamed into place
part_file.py  one file's parts, its ``.part`` descriptor and its resume record
options.py    what one fetch is asked to do (threads, part size, filters, retry)
listing.py    ``Source`` / ``RemoteFile`` and the checks every listing passes
manifest.py   on-disk bookkeeping: manifest, journal, part state, atomic writes
verify.py     size and digest checks
progress.py   counters, snapshots and the progress log line
net.py        blocking HTTP with pooled connections and timeouts (loaded on first download)
retry.py      network settings and the bounded retry loop
egress.py     where downloads may connect (the egress policy)
"""
