---------------------------- MODULE BeaverQueue ----------------------------
(***************************************************************************)
(* beaverq, the crash-safe job queue, as a TLA+ specification.             *)
(*                                                                         *)
(* Theory of operation.  The queue is event-sourced, exactly like the pure *)
(* Python model (model/): every change to a job is an event appended to a  *)
(* log, and the in-memory state is the fold of that log.  Each action that *)
(* changes a job is named after the Python event it appends (JobEnqueued,  *)
(* LeaseGranted, ...); its enabling condition is what model/decide.py      *)
(* accepts, and Apply below is what model/evolve.py does with the event.   *)
(*                                                                         *)
(* The state is split the way a process and its disk split it:            *)
(*                                                                         *)
(*   durable   snap   the snapshot: a job table and the LSN it covers;     *)
(*             dlog   the synced log (records with LSN > some point at or  *)
(*                    below snap.lsn + 1; older ones may be truncated);    *)
(*   volatile  tail   events appended but not yet synced;                  *)
(*             mem    the in-memory job table (the fold of everything);    *)
(*             held   what each running worker holds: <<job, attempt>>;    *)
(*             phase  "up", "down" (crashed) or "recovering";              *)
(*   history   acked        jobs whose enqueue was acknowledged to the     *)
(*                          client (at the Sync that made it durable);     *)
(*             completions  per job, JobCompleted events that became       *)
(*                          durable (never decreases, even if the log is   *)
(*                          truncated);                                    *)
(*             crashes, requeues, releases  how many so far (each bounded *)
(*                          by a constant, so liveness has finitely many). *)
(*                                                                         *)
(* Crash keeps the durable part and any prefix of the unsynced tail (a     *)
(* write may reach the disk without its fsync having returned), and loses  *)
(* the rest: memory and every worker.  Recover rebuilds memory the way     *)
(* model/recovery.py and evolve.replay do: fold the durable log onto the   *)
(* snapshot, skipping events the snapshot already covers (the LSN guard),  *)
(* then end every lease it finds live with LeaseAbandoned.                 *)
(*                                                                         *)
(* Abstractions, each one a superset of what the Python model allows:      *)
(*  - time is gone: a lease may expire (LeaseExpired) and a delay may      *)
(*    elapse (DelayElapsed) at any moment, and whether a retry waits for a *)
(*    backoff is a free choice;                                            *)
(*  - any pending job may be leased (the model picks by priority, FIFO);   *)
(*  - payloads, results, errors, queues, priorities and idempotency keys   *)
(*    are left out (a result that cannot be stored is a JobFailed here, as *)
(*    in the model), and so are retention (JobForgotten) and pausing       *)
(*    (QueuePaused/QueueResumed), see docs/tla.md;                         *)
(*  - one Sync makes the whole tail durable; MaxTail bounds the tail (a    *)
(*    group commit of at most MaxTail events) and MaxLog bounds the log    *)
(*    between checkpoints (Sync waits for Snapshot + TruncateLog).         *)
(*                                                                         *)
(* Two generalisations serve BeaverQueueCluster.tla, which refines this    *)
(* spec, and change nothing for the single-node configurations: MaxTail = *)
(* 0 means write-through (each event durable, an enqueue acknowledged, in  *)
(* the step that appends it: etcd's log), and LostLeaseAbandoned, outside  *)
(* Next, abandons the lease of a worker that died with its node while the  *)
(* queue ran on (SafetySpecWithLostWorkers).                               *)
(*                                                                         *)
(* Bug selects a deliberately broken variant, so that tests can show that  *)
(* the invariants catch it: "none" (the real design), "AckBeforeSync",     *)
(* "NoFence", "NoLsnGuard", "NoAbandon", "WorkersSurviveCrash" (see       *)
(* BugDescription below).                                                  *)
(***************************************************************************)
EXTENDS Integers, Sequences, FiniteSets, TLC

CONSTANTS
    Jobs,           \* job ids
    Workers,        \* worker ids; each runs one lease at a time
    Budgets,        \* the max_attempts values a job may be enqueued with
    MaxRequeues,    \* JobRequeued events in one behaviour, over all jobs
    MaxCrashes,     \* crashes in one behaviour
    MaxReleases,    \* LeaseReleased events in one behaviour, over all jobs
    MaxTail,        \* unsynced events at most; 0: write-through (see WriteThrough)
    MaxLog,         \* durable log records at most (before a checkpoint)
    Bug             \* "none", or the name of a known bug to put back in

BugDescription == [
    none          |-> "the design as specified",
    AckBeforeSync |-> "the client is told 'enqueued' before the event is synced",
    NoFence       |-> "a result is accepted without checking its attempt number",
    NoLsnGuard    |-> "recovery re-applies log events the snapshot already covers",
    NoAbandon     |-> "recovery keeps the leases of workers that died in the crash",
    WorkersSurviveCrash |->
        "workers outlive the process, and get a lease before its event is synced"]

ASSUME Jobs # {} /\ Workers # {}
ASSUME Budgets # {} /\ Budgets \subseteq Nat \ {0}
ASSUME MaxRequeues \in Nat /\ MaxCrashes \in Nat /\ MaxReleases \in Nat
ASSUME MaxTail \in Nat /\ MaxLog \in Nat /\ MaxLog >= MaxTail
ASSUME Bug \in DOMAIN BugDescription

VARIABLES snap, dlog, tail, mem, held, phase, acked, completions, crashes, requeues,
          releases

durable  == <<snap, dlog>>
volatile == <<tail, mem, held, phase>>
history  == <<acked, completions, crashes, requeues, releases>>
vars     == <<durable, volatile, history>>

-----------------------------------------------------------------------------
(* Values.                                                                 *)

Statuses   == {"absent", "pending", "delayed", "in_flight",
               "completed", "dead", "cancelled"}
Finished   == {"completed", "dead", "cancelled"}
EventTypes == {"JobEnqueued", "DelayElapsed", "LeaseGranted", "JobCompleted",
               "JobFailed", "LeaseExpired", "LeaseAbandoned", "LeaseReleased",
               "CancelRequested", "JobCancelled", "JobRequeued"}

Max(S) == CHOOSE x \in S : \A y \in S : y <= x
MaxAttempts == Max(Budgets)
\* The fence never exceeds this: each budget of attempts is used at most once
\* per requeue (a crash may roll it back, never forward), and each release
\* takes a lease without using the budget.
AttemptMax == MaxAttempts * (MaxRequeues + 1) + MaxReleases

\* A job record: what model/jobs.py's Job holds, minus what time and payloads
\* need.  attempt is the fence (leases ever granted), used counts attempts
\* against max (the job's budget), cancel is cancel_requested.
JobRecord == [status : Statuses, attempt : 0..AttemptMax, used : 0..MaxAttempts,
              cancel : BOOLEAN, max : {0} \cup Budgets]
NoJob == [status |-> "absent", attempt |-> 0, used |-> 0, cancel |-> FALSE, max |-> 0]
EmptyTable == [jobs |-> [j \in Jobs |-> NoJob], lsn |-> 0]

\* A log record.  attempt is 0 for events that carry none; target is the
\* status the event's decision chose (model/events.py: JobEnqueued and the
\* events that end an attempt record it), NoTarget for the events with only
\* one possible target; max is the budget (JobEnqueued only).
NoTarget == "none"
EventRecord == [lsn : Nat \ {0}, type : EventTypes, job : Jobs, attempt : 0..AttemptMax,
                target : Statuses \cup {NoTarget}, max : {0} \cup Budgets]
Event(type, j, a, target, m) ==
    [lsn |-> 1, type |-> type, job |-> j, attempt |-> a, target |-> target, max |-> m]

NoLease == <<>>

-----------------------------------------------------------------------------
(* Apply: what an event does to a job (model/evolve.py).                  *)

\* Where an attempt that did not succeed leads: the retry rule,
\* endings.attempt_ending.  Only the actions below (decide) call it; Apply
\* (evolve) applies the target the event recorded and never asks the rule.
Ending(r, delayed) ==
    IF r.cancel THEN "cancelled"
    ELSE IF r.used >= r.max THEN "dead"
    ELSE IF delayed THEN "delayed"
    ELSE "pending"

Apply(r, e) ==
    CASE e.type = "JobEnqueued" ->
            [status |-> e.target, attempt |-> 0, used |-> 0, cancel |-> FALSE, max |-> e.max]
      [] e.type = "DelayElapsed" -> [r EXCEPT !.status = "pending"]
      [] e.type = "LeaseGranted" ->
            [r EXCEPT !.status = "in_flight", !.attempt = e.attempt, !.used = @ + 1]
      [] e.type = "JobCompleted" -> [r EXCEPT !.status = "completed"]
      [] e.type \in {"JobFailed", "LeaseExpired", "LeaseAbandoned"} ->
            [r EXCEPT !.status = e.target]
      \* The released attempt is given back: it does not count.
      [] e.type = "LeaseReleased" -> [r EXCEPT !.status = e.target, !.used = @ - 1]
      [] e.type = "CancelRequested" -> [r EXCEPT !.cancel = TRUE]
      [] e.type = "JobCancelled" -> [r EXCEPT !.status = "cancelled"]
      [] e.type = "JobRequeued" ->
            [r EXCEPT !.status = "pending", !.used = 0, !.cancel = FALSE]

\* evolve.evolve: skip an event the table already covers (the LSN guard),
\* else apply it.  guard = FALSE is the NoLsnGuard bug.
Evolve(t, e, guard) ==
    IF guard /\ e.lsn <= t.lsn
    THEN t
    ELSE [jobs |-> [t.jobs EXCEPT ![e.job] = Apply(@, e)],
          lsn  |-> IF e.lsn > t.lsn THEN e.lsn ELSE t.lsn]

\* evolve.replay: the fold.
RECURSIVE Replay(_, _, _)
Replay(t, log, guard) ==
    IF log = <<>> THEN t ELSE Replay(Evolve(t, Head(log), guard), Tail(log), guard)

RecoveryGuard == Bug # "NoLsnGuard"

-----------------------------------------------------------------------------
(* Helpers over logs.                                                      *)

Log == dlog \o tail
LastLsn == IF tail # <<>> THEN tail[Len(tail)].lsn
           ELSE IF dlog # <<>> THEN dlog[Len(dlog)].lsn ELSE snap.lsn

CountIn(log, type, j) ==
    Cardinality({i \in DOMAIN log : log[i].type = type /\ log[i].job = j})
EnqueuedIn(log) == {log[i].job : i \in {i \in DOMAIN log : log[i].type = "JobEnqueued"}}
\* Add the durable JobCompleted events of log to the history count.
Completed(c, log) == [j \in Jobs |-> c[j] + CountIn(log, "JobCompleted", j)]

Status(j) == mem.jobs[j].status
Rec(j) == mem.jobs[j]

-----------------------------------------------------------------------------
(* Initial state.                                                          *)

Init ==
    /\ snap = EmptyTable
    /\ dlog = <<>>
    /\ tail = <<>>
    /\ mem = EmptyTable
    /\ held = [w \in Workers |-> NoLease]
    /\ phase = "up"
    /\ acked = {}
    /\ completions = [j \in Jobs |-> 0]
    /\ crashes = 0
    /\ requeues = 0
    /\ releases = 0

-----------------------------------------------------------------------------
(* Job actions: decide accepts, the event is appended to the unsynced     *)
(* tail, and memory folds it in (the controller's decide -> append ->      *)
(* evolve; the fsync is the separate Sync action).                         *)

\* MaxTail = 0 is write-through: each event is durable, and the client of an
\* enqueue told, in the step that appends it.  That is the log of the etcd
\* cluster (tla/BeaverQueueCluster.tla refines this spec with it): an append
\* is one transaction, answered only once a quorum has synced it, so there is
\* no unsynced tail.  The single-node configurations all have MaxTail >= 1,
\* and for them nothing below changes.
WriteThrough == MaxTail = 0
Room == WriteThrough \/ Len(tail) < MaxTail

CanAppend == phase = "up" /\ Room

\* Emit sets mem and, by the mode, either tail or dlog and completions (a
\* durable JobCompleted is counted when it becomes durable, as Sync does).
Emit(e) ==
    LET numbered == [e EXCEPT !.lsn = mem.lsn + 1]
    IN  /\ mem' = Evolve(mem, numbered, TRUE)
        /\ IF WriteThrough
           THEN /\ dlog' = Append(dlog, numbered)
                /\ completions' = Completed(completions, <<numbered>>)
                /\ UNCHANGED tail
           ELSE /\ tail' = Append(tail, numbered)
                /\ UNCHANGED <<dlog, completions>>

\* The worker w still has a result the queue would accept: the fence.
Accepts(w) ==
    /\ held[w] # NoLease
    /\ Status(held[w][1]) = "in_flight"
    /\ Bug = "NoFence" \/ Rec(held[w][1]).attempt = held[w][2]

CanEnqueue(j)    == Status(j) = "absent"
CanRelease(j)    == Status(j) = "delayed"
CanLease(w, j)   == held[w] = NoLease /\ Status(j) = "pending"
CanExpire(j)     == Status(j) = "in_flight"
CanRequestCancel(j) == Status(j) = "in_flight" /\ ~Rec(j).cancel
CanCancel(j)     == Status(j) \in {"pending", "delayed"}
CanRequeue(j)    == Status(j) = "dead" /\ requeues < MaxRequeues

JobEnqueued(j, delayed, budget) ==
    /\ CanAppend /\ CanEnqueue(j)
    /\ Emit(Event("JobEnqueued", j, 0, IF delayed THEN "delayed" ELSE "pending", budget))
    \* Written through, the event is durable now, and the client told now.
    /\ acked' = IF Bug = "AckBeforeSync" \/ WriteThrough THEN acked \cup {j} ELSE acked
    /\ UNCHANGED <<snap, held, phase, crashes, requeues, releases>>

DelayElapsed(j) ==
    /\ CanAppend /\ CanRelease(j)
    /\ Emit(Event("DelayElapsed", j, 0, NoTarget, 0))
    /\ UNCHANGED <<snap, held, phase, acked, crashes, requeues, releases>>

\* Python does not check attempts_used < max_attempts here: a pending job
\* always has an attempt left.  AttemptsWithinMax checks that claim.
LeaseGranted(w, j) ==
    /\ CanAppend /\ CanLease(w, j)
    /\ LET attempt == Rec(j).attempt + 1
       IN  /\ Emit(Event("LeaseGranted", j, attempt, NoTarget, 0))
           /\ held' = [held EXCEPT ![w] = <<j, attempt>>]
    /\ UNCHANGED <<snap, phase, acked, crashes, requeues, releases>>

\* Completion wins over a requested cancellation: the work was done.
JobCompleted(w) ==
    /\ CanAppend /\ Accepts(w)
    /\ Emit(Event("JobCompleted", held[w][1], held[w][2], NoTarget, 0))
    /\ held' = [held EXCEPT ![w] = NoLease]
    /\ UNCHANGED <<snap, phase, acked, crashes, requeues, releases>>

\* delayed: the retry waits for a backoff (only when there is a retry).
JobFailed(w, delayed) ==
    /\ CanAppend /\ Accepts(w)
    /\ delayed => Ending(Rec(held[w][1]), TRUE) = "delayed"
    /\ Emit(Event("JobFailed", held[w][1], held[w][2], Ending(Rec(held[w][1]), delayed), 0))
    /\ held' = [held EXCEPT ![w] = NoLease]
    /\ UNCHANGED <<snap, phase, acked, crashes, requeues, releases>>

\* The lease ran out.  The worker does not know: it still holds the lease
\* and will report a stale result (StaleResultRefused).
LeaseExpired(j) ==
    /\ CanAppend /\ CanExpire(j)
    /\ Emit(Event("LeaseExpired", j, Rec(j).attempt, Ending(Rec(j), FALSE), 0))
    /\ UNCHANGED <<snap, held, phase, acked, crashes, requeues, releases>>

\* The runtime gives the live attempt back unfinished (a graceful shutdown
\* whose grace period ended): the job is ready again and the attempt does not
\* count; the fence stays, so the released worker is not told (it has stopped).
\* Not fair: a shutdown is under no obligation, and MaxReleases bounds them.
LeaseReleased(w) ==
    /\ CanAppend /\ Accepts(w) /\ releases < MaxReleases
    \* Decided on the job with the attempt given back, so never dead.
    /\ LET uncounted == [Rec(held[w][1]) EXCEPT !.used = @ - 1]
       IN  Emit(Event("LeaseReleased", held[w][1], held[w][2], Ending(uncounted, FALSE), 0))
    /\ held' = [held EXCEPT ![w] = NoLease]
    /\ releases' = releases + 1
    /\ UNCHANGED <<snap, phase, acked, crashes, requeues>>

\* Only recovery abandons leases (model/recovery.py).
LeaseAbandoned(j) ==
    /\ phase = "recovering" /\ Room
    /\ Status(j) = "in_flight"
    /\ Emit(Event("LeaseAbandoned", j, Rec(j).attempt, Ending(Rec(j), FALSE), 0))
    /\ phase' = IF \E k \in Jobs \ {j} : Status(k) = "in_flight"
                THEN "recovering" ELSE "up"
    /\ UNCHANGED <<snap, held, acked, crashes, requeues, releases>>

CancelRequested(j) ==
    /\ CanAppend /\ CanRequestCancel(j)
    /\ Emit(Event("CancelRequested", j, 0, NoTarget, 0))
    /\ UNCHANGED <<snap, held, phase, acked, crashes, requeues, releases>>

JobCancelled(j) ==
    /\ CanAppend /\ CanCancel(j)
    /\ Emit(Event("JobCancelled", j, 0, NoTarget, 0))
    /\ UNCHANGED <<snap, held, phase, acked, crashes, requeues, releases>>

JobRequeued(j) ==
    /\ CanAppend /\ CanRequeue(j)
    /\ Emit(Event("JobRequeued", j, 0, NoTarget, 0))
    /\ requeues' = requeues + 1
    /\ UNCHANGED <<snap, held, phase, acked, crashes, releases>>

\* Not an event: decide rejects a result from a lease that is no longer the
\* live one (rule stale_attempt), and the worker moves on.
StaleResultRefused(w) ==
    /\ phase = "up"
    /\ held[w] # NoLease /\ ~Accepts(w)
    /\ held' = [held EXCEPT ![w] = NoLease]
    /\ UNCHANGED <<durable, tail, mem, phase, history>>

-----------------------------------------------------------------------------
(* The disk, the crash and the restart.                                    *)

\* fsync returns: the tail is durable, and the clients whose enqueue is in
\* it are told so.
Sync ==
    /\ phase # "down" /\ tail # <<>>
    /\ Len(dlog) + Len(tail) <= MaxLog
    /\ dlog' = dlog \o tail
    /\ tail' = <<>>
    /\ acked' = acked \cup EnqueuedIn(tail)
    /\ completions' = Completed(completions, tail)
    /\ UNCHANGED <<snap, mem, held, phase, crashes, requeues, releases>>

\* A checkpoint: fold the durable log into a new snapshot (written
\* atomically).  The log is truncated by a separate step, so a crash may
\* find a snapshot that covers the first records of the log.
Snapshot ==
    /\ phase # "down"
    /\ dlog # <<>> /\ dlog[Len(dlog)].lsn > snap.lsn
    /\ snap' = Replay(snap, dlog, TRUE)
    /\ UNCHANGED <<dlog, volatile, history>>

TruncateLog ==
    /\ phase # "down"
    /\ dlog # <<>> /\ dlog[1].lsn <= snap.lsn
    /\ dlog' = SubSeq(dlog, snap.lsn - dlog[1].lsn + 2, Len(dlog))
    /\ UNCHANGED <<snap, volatile, history>>

\* The process dies.  The first kept events of the tail reached the disk
\* although no fsync returned for them; nobody was told, so acked does not
\* grow.  Memory and workers are gone: workers run inside the process (see
\* the WorkersSurviveCrash variant for why that matters).
Crash(kept) ==
    /\ phase # "down" /\ crashes < MaxCrashes
    /\ kept \in 0..Len(tail)
    /\ dlog' = dlog \o SubSeq(tail, 1, kept)
    /\ completions' = Completed(completions, SubSeq(tail, 1, kept))
    /\ tail' = <<>>
    /\ mem' = EmptyTable
    /\ held' = IF Bug = "WorkersSurviveCrash" THEN held ELSE [w \in Workers |-> NoLease]
    /\ phase' = "down"
    /\ crashes' = crashes + 1
    /\ UNCHANGED <<snap, acked, requeues, releases>>

\* Restart: snapshot + durable log, then abandon the leases found live.
Recover ==
    /\ phase = "down"
    /\ LET rebuilt == Replay(snap, dlog, RecoveryGuard)
       IN  /\ mem' = rebuilt
           /\ phase' = IF Bug # "NoAbandon"
                          /\ \E j \in Jobs : rebuilt.jobs[j].status = "in_flight"
                       THEN "recovering" ELSE "up"
    /\ UNCHANGED <<durable, tail, held, history>>

-----------------------------------------------------------------------------

Next ==
    \/ \E j \in Jobs, d \in BOOLEAN, b \in Budgets : JobEnqueued(j, d, b)
    \/ \E j \in Jobs : DelayElapsed(j)
    \/ \E w \in Workers, j \in Jobs : LeaseGranted(w, j)
    \/ \E w \in Workers : JobCompleted(w)
    \/ \E w \in Workers, d \in BOOLEAN : JobFailed(w, d)
    \/ \E j \in Jobs : LeaseExpired(j)
    \/ \E j \in Jobs : LeaseAbandoned(j)
    \/ \E w \in Workers : LeaseReleased(w)
    \/ \E j \in Jobs : CancelRequested(j)
    \/ \E j \in Jobs : JobCancelled(j)
    \/ \E j \in Jobs : JobRequeued(j)
    \/ \E w \in Workers : StaleResultRefused(w)
    \/ Sync
    \/ Snapshot
    \/ TruncateLog
    \/ \E k \in 0..MaxTail : Crash(k)
    \/ Recover

\* The queue's own machinery is fair: a restarted process recovers, the
\* disk syncs and checkpoints, free workers take pending work, running
\* workers report, and leases and delays run out.  Clients and operators
\* (enqueue, cancel, requeue), releases and crashes are under no obligation.
Fairness ==
    /\ WF_vars(Recover)
    /\ WF_vars(\E j \in Jobs : LeaseAbandoned(j))
    /\ WF_vars(Sync)
    /\ WF_vars(Snapshot)
    /\ WF_vars(TruncateLog)
    /\ WF_vars(\E w \in Workers, j \in Jobs : LeaseGranted(w, j))
    /\ WF_vars(\E w \in Workers : JobCompleted(w) \/ \E d \in BOOLEAN : JobFailed(w, d))
    /\ WF_vars(\E w \in Workers : StaleResultRefused(w))
    /\ WF_vars(\E j \in Jobs : LeaseExpired(j))
    /\ WF_vars(\E j \in Jobs : DelayElapsed(j))

Spec == Init /\ [][Next]_vars /\ Fairness

-----------------------------------------------------------------------------
(* The cluster generalisation (not part of Spec).                         *)
(*                                                                         *)
(* A single node runs its workers inside its process: they die only with   *)
(* it, and Recover abandons every lease found live.  In a cluster a node   *)
(* dies alone, with its workers, while the other nodes run on, and the     *)
(* leader then abandons the live leases of that node's workers, and only   *)
(* those (tla/BeaverQueueCluster.tla, AbandonNode).  Seen from here, the   *)
(* dead worker is one that never reports again, which Next already allows; *)
(* what Next lacks is the step that ends its lease with LeaseAbandoned     *)
(* while the queue is up.  LostLeaseAbandoned(w) is that step: w is gone,  *)
(* so it no longer holds anything.                                         *)
(*                                                                         *)
(* It is kept out of Next on purpose: in a single process it would abandon *)
(* the lease of a running worker (docs/tla.md, "Recover may be decided at  *)
(* any time"), and LiveLeasesHaveWorkers, the single-node check that       *)
(* recovery abandons, would lose its meaning.  BeaverQueueCluster refines  *)
(* SafetySpecWithLostWorkers (with MaxTail = 0, write-through), the safety *)
(* part of Spec with this one step added.                                  *)

LostLeaseAbandoned(w) ==
    /\ CanAppend /\ Accepts(w)
    /\ Emit(Event("LeaseAbandoned", held[w][1], held[w][2], Ending(Rec(held[w][1]), FALSE), 0))
    /\ held' = [held EXCEPT ![w] = NoLease]
    /\ UNCHANGED <<snap, phase, acked, crashes, requeues, releases>>

NextWithLostWorkers == Next \/ \E w \in Workers : LostLeaseAbandoned(w)

SafetySpecWithLostWorkers == Init /\ [][NextWithLostWorkers]_vars

-----------------------------------------------------------------------------
(* Safety.                                                                 *)

TypeOK ==
    /\ snap \in [jobs : [Jobs -> JobRecord], lsn : Nat]
    /\ dlog \in Seq(EventRecord)
    /\ tail \in Seq(EventRecord) /\ Len(tail) <= MaxTail
    /\ mem \in [jobs : [Jobs -> JobRecord], lsn : Nat]
    /\ held \in [Workers -> {NoLease} \cup (Jobs \X (1..AttemptMax))]
    /\ phase \in {"up", "down", "recovering"}
    /\ acked \subseteq Jobs
    /\ completions \in [Jobs -> Nat]
    /\ crashes \in 0..MaxCrashes
    /\ requeues \in 0..MaxRequeues
    /\ releases \in 0..MaxReleases

\* The durable state: what a recovery that works would rebuild.
DurableTable == Replay(snap, dlog, TRUE)

\* Every enqueue the client was told about is durable...
AckedEnqueuesDurable == \A j \in acked : DurableTable.jobs[j].status # "absent"

\* ...so it is in the state whenever the queue is running, whatever crashed.
AckedEnqueuesSurvive == phase # "down" => \A j \in acked : Status(j) # "absent"

\* A job is in exactly one state.  With mem.jobs a function this is
\* structural (a function has one value per argument); what gives it teeth
\* is MemoryIsFoldOfLog: that one state is the one the log implies.
ExactlyOneState ==
    phase # "down" =>
        \A j \in Jobs : Cardinality({s \in Statuses : Status(j) = s}) = 1

\* The in-memory table is the fold of snapshot + durable log + tail; in
\* particular recovery rebuilt exactly what was durable.
MemoryIsFoldOfLog ==
    phase # "down" => mem = Replay(snap, Log, TRUE)

\* LSNs are consecutive, and the log starts at most one past the snapshot
\* (truncation never makes a gap; replay asserts there is none).
NoLogGap ==
    /\ \A i \in 1..(Len(Log) - 1) : Log[i + 1].lsn = Log[i].lsn + 1
    /\ Log # <<>> => Log[1].lsn <= snap.lsn + 1
    /\ phase # "down" => mem.lsn = LastLsn

\* At most one worker holds a lease on a job whose result would be accepted.
AtMostOneLiveLease ==
    \A j \in Jobs :
        Cardinality({w \in Workers : held[w] # NoLease /\ held[w][1] = j /\ Accepts(w)}) <= 1

\* While up, every live lease belongs to a running worker: recovery ended the
\* leases of the workers that died.
LiveLeasesHaveWorkers ==
    phase = "up" =>
        \A j \in Jobs : Status(j) = "in_flight" =>
            \E w \in Workers : held[w] = <<j, Rec(j).attempt>>

\* The history count of durable completions, plus the one possibly waiting
\* in the tail, is at most one per job.
CompletionAtMostOnce ==
    \A j \in Jobs : completions[j] + CountIn(tail, "JobCompleted", j) <= 1

AttemptsWithinMax ==
    /\ phase # "down" => \A j \in Jobs : Rec(j).used <= Rec(j).max
    /\ \A j \in Jobs : snap.jobs[j].used <= snap.jobs[j].max

Safety ==
    /\ TypeOK /\ AckedEnqueuesDurable /\ AckedEnqueuesSurvive
    /\ ExactlyOneState /\ MemoryIsFoldOfLog
    /\ NoLogGap /\ AtMostOneLiveLease /\ LiveLeasesHaveWorkers
    /\ CompletionAtMostOnce /\ AttemptsWithinMax

\* Finished states are absorbing; dead may be left only by JobRequeued.  In
\* memory across every step that is not a crash or a restart, and in the
\* durable state across every step (an unsynced completion may be lost in a
\* crash, a durable one never).
LeftOnlyByRequeue(j, before, after, appended) ==
    /\ before \in {"completed", "cancelled"} => after = before
    /\ before = "dead" /\ after # "dead" =>
            appended # <<>> /\ \E i \in DOMAIN appended :
                appended[i].type = "JobRequeued" /\ appended[i].job = j

FinishedAbsorbing ==
    [][/\ phase # "down" /\ phase' # "down" =>
            \A j \in Jobs : LeftOnlyByRequeue(j, Status(j), Status(j)',
                                              SubSeq(tail', Len(tail) + 1, Len(tail')))
       /\ \A j \in Jobs :
            LeftOnlyByRequeue(j, DurableTable.jobs[j].status,
                              DurableTable'.jobs[j].status,
                              SubSeq(dlog', Len(dlog) + 1, Len(dlog')))
      ]_vars

\* An attempt ends (a result, an expiry, an abandonment, a release) only for
\* the live lease (spec/history.py, fenced_results).
AttemptEndings == {"JobCompleted", "JobFailed", "LeaseExpired", "LeaseAbandoned",
                   "LeaseReleased"}
ResultsFenced ==
    [][\A k \in (Len(tail) + 1)..Len(tail') :
          tail'[k].type \in AttemptEndings =>
              /\ Status(tail'[k].job) = "in_flight"
              /\ tail'[k].attempt = Rec(tail'[k].job).attempt]_vars

\* The fence only grows, in the durable state.
FenceMonotonic ==
    [][\A j \in Jobs : DurableTable'.jobs[j].attempt >= DurableTable.jobs[j].attempt]_vars

-----------------------------------------------------------------------------
(* Liveness (with the fairness of Spec and finitely many crashes,         *)
(* requeues and releases).                                                 *)

Settled(j) == phase = "up" /\ Status(j) \in Finished

\* Every acknowledged job ends completed, dead or cancelled.
EveryAckedJobFinishes == \A j \in Jobs : j \in acked ~> Settled(j)

\* And then the queue comes to rest: everything synced, nothing unfinished.
EventuallyQuiet ==
    <>[](phase = "up" /\ tail = <<>> /\
         \A j \in Jobs : Status(j) \in Finished \cup {"absent"})

-----------------------------------------------------------------------------
(* Model checking aids.                                                    *)

Symmetry == Permutations(Jobs) \cup Permutations(Workers)

\* Two states that differ only by a constant shift of every LSN behave
\* alike (replay and truncation compare LSNs, never read them), so TLC
\* may fingerprint states by their LSNs relative to the snapshot's.
Shifted(log) == [i \in DOMAIN log |-> [log[i] EXCEPT !.lsn = @ - snap.lsn]]
View ==
    <<snap.jobs, Shifted(dlog), Shifted(tail), mem.jobs,
      IF phase = "down" THEN 0 ELSE mem.lsn - snap.lsn,
      held, phase, history>>

=============================================================================
