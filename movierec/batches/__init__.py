"""The batch format: how the event stream lies in the object store under `data/`, and how it is
read back. Knows no Kafka: the consumer loop (`movierec.adapters.kafka_ingest`) feeds records in,
snapshots, training and the release's online quality read batches out, and neither side needs
the other.

Modules (import the one you need; this package imports none of them itself):
- `layout`: the keys (`batch_key`, `BatchRef`, `KINDS`, `EXTENSIONS`) and `list_batches`;
- `encoding`: deterministic `.npz` columns (`encode_columns`, `decode_columns`, `EventColumns`);
- `builder`: one batch from one partition's records (`BatchBuilder`, `parse_batch`,
  `check_quality` and its thresholds), its manifest (`manifest_bytes`) and `store_batch`;
- `builders`: where batches are built: in this process (`InlineBuilders`) or in a child process
  on the other core (`ProcessBuilders`, whose child runs `serve_builders`);
- `loaders`: what readers use (`load_ratings`, `load_watches` / `WatchColumns`,
  `load_quarantine`, `iter_recommendations`), each Kafka offset once.

Layout (one range of offsets of one partition = one batch; every kind shares the range):

    data/ratings/<topic>/p<partition>/<first:020d>-<last:020d>.npz      columns, see encoding.EventColumns
    data/watches/<topic>/p<partition>/<first:020d>-<last:020d>.npz
    data/recommendations/<topic>/p<partition>/<first:020d>-<last:020d>.jsonl
    data/quarantine/<topic>/p<partition>/<first:020d>-<last:020d>.jsonl  offset, reason, detail, raw line
    data/manifests/<topic>/p<partition>/<first:020d>-<last:020d>.json    written LAST: the batch's commit
                                                                         point, with its quality checks
                                                                         and each kind's first and last
                                                                         event time (`time_us`)
    data/epochs/<topic>/p<partition>/e<epoch:06d>.json                   one per log epoch (movierec.ingest.LogEpoch)

Those are epoch 0's keys. A partition whose log was reset or replaced starts a new epoch, whose
batches add a component after the topic (`data/<kind>/<topic>/e<epoch>/p<partition>/...`): offsets
start again in it, so a record is named by (topic, partition, epoch, offset).

What makes it exactly once, whoever writes: every object is written with `put_once` and its bytes
are a pure function of the records (a re-run of the same offsets is a no-op); a batch exists only
once its manifest exists, and loaders read only batches named by manifests; every row carries its
Kafka offset, so loaders keep each (epoch, offset) once even where two stored ranges overlap.
A loader given a time `window` skips batches whose manifest puts them outside it (manifests
written before `time_us` existed have none: those batches are always read).

Owns: the `data/` keys, the encoding, batch building and quality checks, manifests, the loaders.
Must not touch: Kafka (offsets arrive as plain ints), committing offsets, HTTP, parsing lines
(that is `movierec.events.parse_line`, the one parser), training.
"""
