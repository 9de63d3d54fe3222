-- pair_offsets: eight rows, each updated by every committed batch of its pair (hundreds of
-- times a second). With the default fillfactor they share one full page, so each update has to
-- prune the page first or leave it (non-HOT, touching the index). Leaving most of every page
-- free keeps those updates HOT and the rows apart.
ALTER TABLE pair_offsets SET (fillfactor = 10);

-- orders: rows are updated as they fill, amend and cancel. Free space on each page lets an
-- update that changes no indexed column stay on the page (HOT, no index write).
ALTER TABLE orders SET (fillfactor = 80);
