------------------------- MODULE BeaverQueueCompare -------------------------
(***************************************************************************)
(* Print every job table BeaverQueue reaches while up, once per TLC worker, *)
(* so that tests/test_tla_conformance.py can compare the set with the      *)
(* states the Python model reaches in the same scope.                      *)
(*                                                                         *)
(* NewTableSeen is used as an invariant: it is always TRUE, and prints the *)
(* table of the current state the first time this worker meets it.  TLC's *)
(* per-worker registers (TLCGet/TLCSet) remember what was printed; two     *)
(* workers may both print a table, the reader takes the union.  Printing   *)
(* tables instead of dumping states keeps the output small.                *)
(*                                                                         *)
(* The CI safety run is this module with BeaverQueue.cfg plus              *)
(* "INVARIANT NewTableSeen" (tests/tla_tlc.py, ci_safety_run): one TLC run  *)
(* checks the spec and collects the tables, in the same scope as the       *)
(* Python search (tests/tla_traces.py, reachable_projections).             *)
(***************************************************************************)
EXTENDS BeaverQueue

ASSUME TLCSet(1, {})

Table == [j \in Jobs |-> <<Status(j), Rec(j).attempt, Rec(j).used, Rec(j).cancel, Rec(j).max>>]

NewTableSeen ==
    phase = "up" /\ Table \notin TLCGet(1) =>
        /\ PrintT(<<"table", Table>>)
        /\ TLCSet(1, TLCGet(1) \cup {Table})

=============================================================================
