------------------------- MODULE BeaverQueueCluster -------------------------
(***************************************************************************)
(* beaverq as a cluster of nodes on etcd, and why it is still BeaverQueue. *)
(*                                                                         *)
(* Theory of operation (docs/tla.md, "The cluster").  The log of events    *)
(* lives in etcd: elog, one total order, every record durable once it is   *)
(* in (etcd answers a transaction after a quorum has synced it, and its    *)
(* transactions are strictly serializable).  An append is one transaction  *)
(* that compares two things and then puts log/<lsn+1> and head:            *)
(*                                                                         *)
(*   the head:  the appender's position is the end of the log,             *)
(*              lsn[n] = Len(elog), so it decided on the whole log;        *)
(*   the epoch: the create-revision of the leader key is the epoch the     *)
(*              appender believes it leads, believed[n] = epoch.           *)
(*                                                                         *)
(* Leadership is an etcd election on a lease; epoch counts elections.  A   *)
(* node that lost its lease may go on believing it leads (Elect does not   *)
(* tell it): the epoch compare refuses its appends.  Only a node that      *)
(* believes it leads decides (followers forward commands to it), and it    *)
(* decides on its own table, table[n], the fold of the first lsn[n]        *)
(* records; every node folds the log as it reads it (CatchUp).             *)
(*                                                                         *)
(* Unknown outcomes.  An append may commit without its appender hearing    *)
(* so (a timeout): its position and table stay where they were, it must    *)
(* read the log to learn what happened, and the head compare refuses its   *)
(* next append until it has.  A producer whose enqueue had no answer       *)
(* retries with the same job id, and the retry finds the committed job     *)
(* (EnqueueFound) instead of enqueueing it twice.  A worker whose lease    *)
(* request had no answer retries the same way and is handed the committed  *)
(* grant; so a worker holds its lease from the commit, answered or not.    *)
(*                                                                         *)
(* A node crash loses the node's table and position (it restarts at lsn 0 *)
(* and folds the log again) and its workers.  A worker that held a lease   *)
(* is then lost: nobody will report for it.  The leader abandons the live  *)
(* leases of the lost workers of that node, and only those (AbandonNode);  *)
(* a lost worker whose lease ended otherwise is simply dropped (Refused).  *)
(*                                                                         *)
(* Time is abstract, as in BeaverQueue: a lease may expire and a delay     *)
(* elapse at any moment; both are appends like any other, so only the      *)
(* fenced leader makes them (the Python leader's Tick).                    *)
(*                                                                         *)
(* Refinement.  Mapped through BQ below (mem is the fold of the whole log, *)
(* dlog is elog, there is no unsynced tail, the snapshot stays empty), a   *)
(* behaviour of this spec is a behaviour of BeaverQueue's safety part,     *)
(* with write-through (MaxTail = 0) and one generalisation: a lost         *)
(* worker's lease may be abandoned while the queue runs                    *)
(* (BeaverQueue!LostLeaseAbandoned).  TLC checks it as the property        *)
(* Refinement.  Each append carries one event, so each is one BeaverQueue  *)
(* step; the implementation's batch of k events is k such steps in one     *)
(* transaction, which nobody can observe in between.                       *)
(*                                                                         *)
(* Left out: log compaction and snapshots (etcd keeps the whole log here), *)
(* membership, how commands travel (forwarding is abstracted away: the     *)
(* deciding node is the leader), a leader stepping down (it changes        *)
(* nothing: a deposed leader's appends are refused anyway), and crashed    *)
(* nodes staying down (a crash restarts the node at once; a down node     *)
(* does nothing, which a node that is up may also do).                     *)
(*                                                                         *)
(* Bug selects a broken variant that TLC must catch: "none",              *)
(* "NoEpochFence", "NoHeadCompare", "GlobalRecover" (BugDescription).      *)
(***************************************************************************)
EXTENDS Integers, Sequences, FiniteSets, TLC

CONSTANTS
    Nodes,          \* node ids
    Slots,          \* worker slots per node: node n runs the workers <<n, s>>
    Jobs,           \* job ids
    Budgets,        \* the max_attempts values a job may be enqueued with
    Events,         \* the event types appended here (a subset of BeaverQueue's)
    MaxRequeues,    \* JobRequeued events in one behaviour, over all jobs
    MaxReleases,    \* LeaseReleased events in one behaviour, over all jobs
    MaxEpoch,       \* elections in one behaviour
    MaxCrashes,     \* node crashes in one behaviour
    MaxLog,         \* records in elog at most (LogBound, a state constraint)
    Bug             \* "none", or the name of a known bug to put back in

BugDescription == [
    none          |-> "the design as specified",
    NoEpochFence  |-> "an append compares the log head only, not the leader's epoch",
    NoHeadCompare |-> "an append compares the epoch only, and puts log/<lsn+1> at the appender's position",
    GlobalRecover |-> "AbandonNode abandons every live lease, also those of live nodes' workers"]

ASSUME Nodes # {} /\ Slots # {} /\ Jobs # {}
ASSUME MaxEpoch \in Nat \ {0} /\ MaxCrashes \in Nat /\ MaxLog \in Nat
ASSUME Bug \in DOMAIN BugDescription
\* Events lets a configuration spend its states on the cluster rather than on
\* the job lifecycle, which BeaverQueue's own configurations check in full.
\* The events of enqueue, lease, result, expiry and abandonment are the ones
\* the cluster's mechanisms (unknown outcomes, the fences, node loss) act on.
ASSUME {"JobEnqueued", "LeaseGranted", "JobCompleted", "LeaseAbandoned"} \subseteq Events

Workers == Nodes \X Slots
NodeOf(w) == w[1]

VARIABLES
    elog,       \* the log in etcd: BeaverQueue event records, lsn = position
    lsn,        \* per node, how much of elog it has folded
    table,      \* per node, its job table: the fold of elog[1..lsn[n]]
    believed,   \* per node, the epoch it believes it leads; 0: it follows
    epoch,      \* the current election's epoch (the leader key's revision)
    held,       \* per worker, the lease it holds: <<job, attempt>>
    lost,       \* workers that died with their node while holding a lease
    acked,      \* history: jobs whose producer was told "enqueued"
    appenders,  \* history: the nodes whose append committed in this epoch
    crashes,    \* history: node crashes so far
    folded      \* derived: Fold(elog), the fold of the whole log.  No node
                \* need hold it; it is kept so that the refinement mapping
                \* does not refold the log at every reference (TypeOK checks
                \* it is the fold; a function of elog, it adds no states)

vars == <<elog, lsn, table, believed, epoch, held, lost, acked, appenders, crashes, folded>>

-----------------------------------------------------------------------------
(* BeaverQueue's pure operators (Replay, Evolve, Ending, Event, ...).  This *)
(* instance replaces every variable by a constant; only operators that do   *)
(* not read variables are used through it.                                  *)

Base == INSTANCE BeaverQueue
        WITH snap <- 0, dlog <- 0, tail <- 0, mem <- 0, held <- 0, phase <- 0,
             acked <- 0, completions <- 0, crashes <- 0, requeues <- 0, releases <- 0,
             MaxCrashes <- 0, MaxTail <- 0, MaxLog <- 0, Bug <- "none"

ASSUME Events \subseteq Base!EventTypes

NoLease == <<>>
Empty == Base!EmptyTable
Fold(log) == Base!Replay(Empty, log, TRUE)
Count(log, type, j) == Base!CountIn(log, type, j)
CountAll(log, type) == Cardinality({i \in DOMAIN log : log[i].type = type})

Requeues == CountAll(elog, "JobRequeued")
Releases == CountAll(elog, "LeaseReleased")

-----------------------------------------------------------------------------
(* The refinement mapping.                                                 *)
(*                                                                         *)
(*   snap        the empty table: no snapshots here                        *)
(*   dlog        elog: durable as soon as it is in                         *)
(*   tail        empty: etcd answers after a quorum synced                 *)
(*   mem         the fold of the whole of elog (no node need hold it)      *)
(*   held        held (a lost worker holds its lease until it is dealt     *)
(*               with: the single node's view of a worker that never       *)
(*               reports)                                                  *)
(*   phase       "up": the cluster never stops as a whole                  *)
(*   acked       the jobs enqueued in elog: all of them durable, so any    *)
(*               could have been acknowledged (the producers actually told *)
(*               are the stronger acked of this spec, AckedEnqueuedOnce)   *)
(*   completions the JobCompleted records of elog, per job                 *)
(*   crashes     0: a node crash is no crash of the queue                  *)
(*   requeues, releases   counted in elog (it is never truncated here)     *)

BQ == INSTANCE BeaverQueue
      WITH snap <- Empty, dlog <- elog, tail <- << >>, mem <- folded,
           held <- held, phase <- "up", acked <- Base!EnqueuedIn(elog),
           completions <- [j \in Jobs |-> Count(elog, "JobCompleted", j)],
           crashes <- 0, requeues <- Requeues, releases <- Releases,
           MaxCrashes <- 0, MaxTail <- 0, MaxLog <- 0, Bug <- "none"

-----------------------------------------------------------------------------
(* Initial state: an empty log, nobody elected yet.                        *)

Init ==
    /\ elog = << >>
    /\ lsn = [n \in Nodes |-> 0]
    /\ table = [n \in Nodes |-> Empty]
    /\ believed = [n \in Nodes |-> 0]
    /\ epoch = 0
    /\ held = [w \in Workers |-> NoLease]
    /\ lost = {}
    /\ acked = {}
    /\ appenders = {}
    /\ crashes = 0
    /\ folded = Empty

-----------------------------------------------------------------------------
(* The append: one etcd transaction.                                       *)

\* n believes it leads (of epoch believed[n]); only the current leader is right.
Leads(n) == believed[n] # 0
CurrentLeader(n) == Leads(n) /\ believed[n] = epoch
R(n, j) == table[n].jobs[j]

\* Node n appends e.  The two compares are the fences; NoEpochFence and
\* NoHeadCompare each drop one.  The put is of log/<lsn[n] + 1> and head, at
\* the appender's own position: with the head compare that is the end of the
\* log; without it the put overwrites the record there, and head, pointing
\* at it, hides whatever came after.  known: the appender hears the answer
\* and folds its own event; otherwise it learns the outcome by CatchUp.
Commit(n, e, known) ==
    /\ Leads(n)
    /\ Bug = "NoEpochFence" \/ believed[n] = epoch
    /\ Bug = "NoHeadCompare" \/ lsn[n] = Len(elog)
    /\ LET record == [e EXCEPT !.lsn = lsn[n] + 1]
       IN  /\ elog' = Append(SubSeq(elog, 1, lsn[n]), record)
           /\ lsn' = IF known THEN [lsn EXCEPT ![n] = @ + 1] ELSE lsn
           /\ table' = IF known THEN [table EXCEPT ![n] = Base!Evolve(@, record, TRUE)]
                       ELSE table
           /\ folded' = IF lsn[n] = Len(elog) THEN Base!Evolve(folded, record, TRUE)
                        ELSE Fold(elog')
    /\ appenders' = appenders \cup {n}

Event(type, j, attempt, target, budget) == Base!Event(type, j, attempt, target, budget)
NoTarget == Base!NoTarget

\* The worker w holds a lease n's table would take a result for: the fence.
Accepts(n, w) ==
    /\ held[w] # NoLease
    /\ R(n, held[w][1]).status = "in_flight"
    /\ R(n, held[w][1]).attempt = held[w][2]

-----------------------------------------------------------------------------
(* Job actions, decided by node n on its table (decide), appended with     *)
(* Commit.  Each is named after the event it appends, as in BeaverQueue.   *)

JobEnqueued(n, j, delayed, budget, known) ==
    /\ delayed => "DelayElapsed" \in Events
    /\ R(n, j).status = "absent"
    /\ Commit(n, Event("JobEnqueued", j, 0, IF delayed THEN "delayed" ELSE "pending", budget),
              known)
    /\ acked' = IF known THEN acked \cup {j} ELSE acked
    /\ UNCHANGED <<believed, epoch, held, lost, crashes>>

\* The producer whose enqueue had no answer retries with the same job id; the
\* job is there, so the retry appends nothing and answers "enqueued".
EnqueueFound(n, j) ==
    /\ Leads(n) /\ j \notin acked
    /\ R(n, j).status # "absent"
    /\ acked' = acked \cup {j}
    /\ UNCHANGED <<elog, lsn, table, believed, epoch, held, lost, appenders, crashes, folded>>

DelayElapsed(n, j, known) ==
    /\ "DelayElapsed" \in Events
    /\ R(n, j).status = "delayed"
    /\ Commit(n, Event("DelayElapsed", j, 0, NoTarget, 0), known)
    /\ UNCHANGED <<believed, epoch, held, lost, acked, crashes>>

\* The grant is the worker's from the commit on (see the header).
LeaseGranted(n, w, j, known) ==
    /\ held[w] = NoLease /\ R(n, j).status = "pending"
    /\ LET attempt == R(n, j).attempt + 1
       IN  /\ Commit(n, Event("LeaseGranted", j, attempt, NoTarget, 0), known)
           /\ held' = [held EXCEPT ![w] = <<j, attempt>>]
    /\ UNCHANGED <<believed, epoch, lost, acked, crashes>>

\* A lost worker reports nothing: only workers of running nodes do.
JobCompleted(n, w, known) ==
    /\ w \notin lost /\ Accepts(n, w)
    /\ Commit(n, Event("JobCompleted", held[w][1], held[w][2], NoTarget, 0), known)
    /\ held' = [held EXCEPT ![w] = NoLease]
    /\ UNCHANGED <<believed, epoch, lost, acked, crashes>>

JobFailed(n, w, delayed, known) ==
    /\ "JobFailed" \in Events /\ (delayed => "DelayElapsed" \in Events)
    /\ w \notin lost /\ Accepts(n, w)
    /\ LET r == R(n, held[w][1])
       IN  /\ delayed => Base!Ending(r, TRUE) = "delayed"
           /\ Commit(n, Event("JobFailed", held[w][1], held[w][2], Base!Ending(r, delayed), 0),
                     known)
    /\ held' = [held EXCEPT ![w] = NoLease]
    /\ UNCHANGED <<believed, epoch, lost, acked, crashes>>

\* Time is abstract: the fenced leader's Tick may find any lease expired.
LeaseExpired(n, j, known) ==
    /\ "LeaseExpired" \in Events
    /\ R(n, j).status = "in_flight"
    /\ Commit(n, Event("LeaseExpired", j, R(n, j).attempt, Base!Ending(R(n, j), FALSE), 0),
              known)
    /\ UNCHANGED <<believed, epoch, held, lost, acked, crashes>>

\* A node shutting down gracefully hands a live lease back.
LeaseReleased(n, w, known) ==
    /\ "LeaseReleased" \in Events
    /\ w \notin lost /\ Accepts(n, w) /\ Releases < MaxReleases
    /\ LET uncounted == [R(n, held[w][1]) EXCEPT !.used = @ - 1]
       IN  Commit(n, Event("LeaseReleased", held[w][1], held[w][2],
                           Base!Ending(uncounted, FALSE), 0), known)
    /\ held' = [held EXCEPT ![w] = NoLease]
    /\ UNCHANGED <<believed, epoch, lost, acked, crashes>>

CancelRequested(n, j, known) ==
    /\ "CancelRequested" \in Events
    /\ R(n, j).status = "in_flight" /\ ~R(n, j).cancel
    /\ Commit(n, Event("CancelRequested", j, 0, NoTarget, 0), known)
    /\ UNCHANGED <<believed, epoch, held, lost, acked, crashes>>

JobCancelled(n, j, known) ==
    /\ "JobCancelled" \in Events
    /\ R(n, j).status \in {"pending", "delayed"}
    /\ Commit(n, Event("JobCancelled", j, 0, NoTarget, 0), known)
    /\ UNCHANGED <<believed, epoch, held, lost, acked, crashes>>

JobRequeued(n, j, known) ==
    /\ "JobRequeued" \in Events
    /\ R(n, j).status = "dead" /\ Requeues < MaxRequeues
    /\ Commit(n, Event("JobRequeued", j, 0, NoTarget, 0), known)
    /\ UNCHANGED <<believed, epoch, held, lost, acked, crashes>>

\* The leader abandons a live lease of a lost worker of node m: what
\* AbandonNode(m) does, one lease per append (a batch would be several
\* BeaverQueue steps in one transaction).  It is issued once m is known to
\* have died (nodes/<m> vanished, or m restarted), and it looks the leases up
\* by the worker ids in the table.  GlobalRecover: it abandons every live
\* lease, as a single node's Recover does, including those of workers that
\* are alive; they keep running and will be refused as stale.
AbandonNode(n, m, known) ==
    /\ \E v \in lost : NodeOf(v) = m
    /\ \E j \in Jobs :
        LET r == R(n, j)
            holders == {w \in Workers : held[w] = <<j, r.attempt>>}
        IN  /\ r.status = "in_flight"
            /\ Bug = "GlobalRecover" \/ \E w \in holders \cap lost : NodeOf(w) = m
            /\ Commit(n, Event("LeaseAbandoned", j, r.attempt, Base!Ending(r, FALSE), 0), known)
            /\ held' = [w \in Workers |-> IF w \in holders \cap lost THEN NoLease ELSE held[w]]
            /\ lost' = lost \ holders
    /\ UNCHANGED <<believed, epoch, acked, crashes>>

\* Not an event: the leader, on a table it knows is the whole log (a
\* linearizable read of the head), refuses a result or a release for a lease
\* that is no longer live (stale_attempt), and the worker moves on; a lost
\* worker whose lease ended otherwise (it expired) is dropped the same way.
Refused(n, w) ==
    /\ Leads(n) /\ lsn[n] = Len(elog)
    /\ held[w] # NoLease /\ ~Accepts(n, w)
    /\ held' = [held EXCEPT ![w] = NoLease]
    /\ lost' = lost \ {w}
    /\ UNCHANGED <<elog, lsn, table, believed, epoch, acked, appenders, crashes, folded>>

-----------------------------------------------------------------------------
(* Nodes: reading the log, elections, crashes.                             *)

\* Node n reads the log up to the head (a range read from lsn[n] + 1, or
\* what the watch on log/ has delivered) and folds it.  Reading to the head
\* in one step loses nothing: a node's table between two records decides
\* nothing (deciding needs the head, by the head compare), and leaving the
\* intermediate positions out keeps the state space down.  A node may still
\* fall behind by any number of records, by not reading.
CatchUp(n) ==
    /\ lsn[n] < Len(elog)
    /\ lsn' = [lsn EXCEPT ![n] = Len(elog)]
    /\ table' = [table EXCEPT ![n] = Base!Replay(@, SubSeq(elog, lsn[n] + 1, Len(elog)), TRUE)]
    /\ UNCHANGED <<elog, believed, epoch, held, lost, acked, appenders, crashes, folded>>

\* Node m wins an election: the leader key is created anew, so the epoch
\* (its create-revision) grows.  When another node led, this is the loss of
\* its leadership (its lease expired): it is not told, and goes on believing
\* it leads; the epoch compare refuses its appends from now on.  The winner
\* need not have read the whole log: the head compare makes it read first.
Elect(m) ==
    /\ epoch < MaxEpoch /\ ~CurrentLeader(m)
    /\ epoch' = epoch + 1
    /\ believed' = [believed EXCEPT ![m] = epoch + 1]
    /\ appenders' = {}
    /\ UNCHANGED <<elog, lsn, table, held, lost, acked, crashes, folded>>

\* Node m crashes and restarts: table, position and belief are gone, and so
\* are its workers; those that held a lease are lost.
NodeCrash(m) ==
    /\ crashes < MaxCrashes
    /\ lsn' = [lsn EXCEPT ![m] = 0]
    /\ table' = [table EXCEPT ![m] = Empty]
    /\ believed' = [believed EXCEPT ![m] = 0]
    /\ lost' = lost \cup {w \in Workers : NodeOf(w) = m /\ held[w] # NoLease}
    /\ crashes' = crashes + 1
    /\ UNCHANGED <<elog, epoch, held, acked, appenders, folded>>

-----------------------------------------------------------------------------

Next ==
    \/ \E n \in Nodes, known \in BOOLEAN :
        \/ \E j \in Jobs, d \in BOOLEAN, b \in Budgets : JobEnqueued(n, j, d, b, known)
        \/ \E j \in Jobs : DelayElapsed(n, j, known)
        \/ \E w \in Workers, j \in Jobs : LeaseGranted(n, w, j, known)
        \/ \E w \in Workers : JobCompleted(n, w, known)
        \/ \E w \in Workers, d \in BOOLEAN : JobFailed(n, w, d, known)
        \/ \E j \in Jobs : LeaseExpired(n, j, known)
        \/ \E w \in Workers : LeaseReleased(n, w, known)
        \/ \E j \in Jobs : CancelRequested(n, j, known)
        \/ \E j \in Jobs : JobCancelled(n, j, known)
        \/ \E j \in Jobs : JobRequeued(n, j, known)
        \/ \E m \in Nodes : AbandonNode(n, m, known)
    \/ \E n \in Nodes, j \in Jobs : EnqueueFound(n, j)
    \/ \E n \in Nodes, w \in Workers : Refused(n, w)
    \/ \E n \in Nodes : CatchUp(n) \/ Elect(n) \/ NodeCrash(n)

\* Safety only: liveness of the cluster (fair elections, catch-up) is not
\* stated here; see docs/tla.md.
Spec == Init /\ [][Next]_vars

-----------------------------------------------------------------------------
(* Safety of the cluster itself.                                           *)

TypeOK ==
    /\ elog \in Seq(Base!EventRecord)
    /\ \A i \in DOMAIN elog : elog[i].lsn = i
    /\ lsn \in [Nodes -> Nat]
    /\ believed \in [Nodes -> 0..MaxEpoch]
    /\ epoch \in 0..MaxEpoch
    /\ held \in [Workers -> {NoLease} \cup (Jobs \X (Nat \ {0}))]
    /\ lost \subseteq Workers
    /\ \A w \in lost : held[w] # NoLease
    /\ acked \subseteq Jobs
    /\ appenders \subseteq Nodes
    /\ crashes \in 0..MaxCrashes
    /\ folded = Fold(elog)

\* At most one node appends in each epoch: the elected one.
OneAppenderPerEpoch == Cardinality(appenders) <= 1

\* Every node's position is in the log, and its table is the fold of the
\* log up to there: all nodes read one log, and what a node has read is
\* never rewritten.
PositionsArePrefixes ==
    \A n \in Nodes :
        /\ lsn[n] <= Len(elog)
        /\ table[n] = Fold(SubSeq(elog, 1, lsn[n]))

\* Every enqueue a producer was told about is in the log, exactly once.
AckedEnqueuedOnce == \A j \in acked : Count(elog, "JobEnqueued", j) = 1

\* No job is completed twice.
CompletedAtMostOnce == \A j \in Jobs : Count(elog, "JobCompleted", j) <= 1

\* A worker that is alive never holds a lease the log says was abandoned:
\* abandonment is for the leases of lost workers only.
OnlyLostLeasesAbandoned ==
    \A w \in Workers \ lost :
        held[w] # NoLease =>
            ~\E i \in DOMAIN elog :
                /\ elog[i].type = "LeaseAbandoned"
                /\ elog[i].job = held[w][1]
                /\ elog[i].attempt = held[w][2]

\* BeaverQueue's own invariants, of the mapped state.
BaseSafety == BQ!Safety

\* The refinement: mapped, every behaviour is one of BeaverQueue (safety part,
\* write-through, lost workers' leases abandoned while up).
Refinement == BQ!SafetySpecWithLostWorkers

-----------------------------------------------------------------------------
(* Model checking aids.                                                    *)

Symmetry == Permutations(Jobs) \cup Permutations(Nodes)

\* Behaviours are explored up to MaxLog records (a state constraint: TLC does
\* not extend a state whose log is longer).
LogBound == Len(elog) <= MaxLog

\* The view: what TLC fingerprints a state by.  Without it, the interleavings
\* of the two jobs' histories in elog multiply the state space many times
\* over, although the order of records does not matter to what happens next.
\*
\* What a node has not read matters only to a node that appends from behind
\* the head, which the head compare forbids.  With it (every Bug but
\* NoHeadCompare), a node behind the head can only read up to it, in one
\* step, and then holds the fold of the whole log (PositionsArePrefixes),
\* whatever the records were; before that it decides nothing.  So a state
\* is fingerprinted by each node's table and whether it is at the head, the
\* fold of the whole log, the length of the log (the state constraint
\* LogBound reads it), and the history the checks read (how often each job
\* was enqueued and completed, requeues, releases, which leases were
\* abandoned).  For NoHeadCompare the log the slowest node has not read is
\* kept, with positions relative to the end (LSNs are positions, and only
\* their differences matter).
Unnumbered(log) == [i \in DOMAIN log |-> [log[i] EXCEPT !.lsn = 0]]
Slowest == CHOOSE k \in {lsn[n] : n \in Nodes} : \A n \in Nodes : k <= lsn[n]
Unread ==
    IF Bug = "NoHeadCompare"
    THEN <<[n \in Nodes |-> Len(elog) - lsn[n]],
           Unnumbered(SubSeq(elog, Slowest + 1, Len(elog)))>>
    ELSE [n \in Nodes |-> lsn[n] = Len(elog)]
Abandoned == {<<elog[i].job, elog[i].attempt>> :
                 i \in {i \in DOMAIN elog : elog[i].type = "LeaseAbandoned"}}
Past ==
    <<[j \in Jobs |-> <<Count(elog, "JobEnqueued", j), Count(elog, "JobCompleted", j)>>],
      Requeues, Releases, Abandoned>>
View ==
    <<Len(elog), Unread, [n \in Nodes |-> table[n].jobs], folded.jobs,
      believed, epoch, held, lost, acked, appenders, crashes, Past>>

=============================================================================
