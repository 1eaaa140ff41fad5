//! The one table of lifecycle kinds and reasons: each domain value beside
//! its Go wire name and its protobuf value. Every conversion (validation,
//! the JSON encoding and its reader, the CLI, metric labels) reads it, so a
//! name is spelled exactly once.

use crate::pb;

/// A lifecycle endpoint. Downstream pairs `*.start` with `*.stop` by id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    VmComputeStart,
    VmComputeStop,
    VmStorageStart,
    VmStorageStop,
    SnapStorageStart,
    SnapStorageStop,
}

/// Why an endpoint was emitted. Not tied to start or stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    Boot,
    Restart,
    Clone,
    Restore,
    HibernateWake,
    StopUser,
    StopCrash,
    VmRemove,
    SnapRemove,
}

/// Row `i` describes the variant whose discriminant is `i` (checked below
/// at compile time, so indexing by discriminant cannot go wrong).
const KINDS: [(Kind, &str, pb::Kind); 6] = [
    (
        Kind::VmComputeStart,
        "vm.compute.start",
        pb::Kind::VmComputeStart,
    ),
    (
        Kind::VmComputeStop,
        "vm.compute.stop",
        pb::Kind::VmComputeStop,
    ),
    (
        Kind::VmStorageStart,
        "vm.storage.start",
        pb::Kind::VmStorageStart,
    ),
    (
        Kind::VmStorageStop,
        "vm.storage.stop",
        pb::Kind::VmStorageStop,
    ),
    (
        Kind::SnapStorageStart,
        "snap.storage.start",
        pb::Kind::SnapStorageStart,
    ),
    (
        Kind::SnapStorageStop,
        "snap.storage.stop",
        pb::Kind::SnapStorageStop,
    ),
];

const REASONS: [(Reason, &str, pb::Reason); 9] = [
    (Reason::Boot, "boot", pb::Reason::Boot),
    (Reason::Restart, "restart", pb::Reason::Restart),
    (Reason::Clone, "clone", pb::Reason::Clone),
    (Reason::Restore, "restore", pb::Reason::Restore),
    (
        Reason::HibernateWake,
        "hibernate-wake",
        pb::Reason::HibernateWake,
    ),
    (Reason::StopUser, "stop-user", pb::Reason::StopUser),
    (Reason::StopCrash, "stop-crash", pb::Reason::StopCrash),
    (Reason::VmRemove, "vm-rm", pb::Reason::VmRm),
    (Reason::SnapRemove, "snap-rm", pb::Reason::SnapRm),
];

const _: () = {
    let mut i = 0;
    while i < KINDS.len() {
        assert!(KINDS[i].0 as usize == i, "KINDS is out of order");
        i += 1;
    }
    let mut i = 0;
    while i < REASONS.len() {
        assert!(REASONS[i].0 as usize == i, "REASONS is out of order");
        i += 1;
    }
};

// === impl Kind ===

impl Kind {
    /// Every kind, in table order.
    pub fn all() -> impl Iterator<Item = Kind> {
        KINDS.iter().map(|r| r.0)
    }

    /// The wire name, as the Go package spells it.
    pub fn as_str(self) -> &'static str {
        KINDS[self as usize].1
    }

    /// The kind of a wire name (`vm.compute.start`).
    pub fn from_wire(name: &str) -> Option<Kind> {
        KINDS.iter().find(|r| r.1 == name).map(|r| r.0)
    }

    /// `None` for `KIND_UNSPECIFIED`.
    pub fn from_pb(k: pb::Kind) -> Option<Kind> {
        KINDS.iter().find(|r| r.2 == k).map(|r| r.0)
    }

    pub fn to_pb(self) -> pb::Kind {
        KINDS[self as usize].2
    }

    /// True for the `vm.*` kinds, which are keyed by `vm_id`.
    pub fn is_vm(self) -> bool {
        !matches!(self, Kind::SnapStorageStart | Kind::SnapStorageStop)
    }
}

// === impl Reason ===

impl Reason {
    /// Every reason, in table order.
    pub fn all() -> impl Iterator<Item = Reason> {
        REASONS.iter().map(|r| r.0)
    }

    /// The wire name, as the Go package spells it.
    pub fn as_str(self) -> &'static str {
        REASONS[self as usize].1
    }

    /// The reason of a wire name (`stop-user`).
    pub fn from_wire(name: &str) -> Option<Reason> {
        REASONS.iter().find(|r| r.1 == name).map(|r| r.0)
    }

    /// `None` for `REASON_UNSPECIFIED`.
    pub fn from_pb(r: pb::Reason) -> Option<Reason> {
        REASONS.iter().find(|row| row.2 == r).map(|row| row.0)
    }

    pub fn to_pb(self) -> pb::Reason {
        REASONS[self as usize].2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips_and_every_pb_value_is_covered() {
        for k in Kind::all() {
            assert_eq!(Kind::from_wire(k.as_str()), Some(k));
            assert_eq!(Kind::from_pb(k.to_pb()), Some(k));
        }
        for r in Reason::all() {
            assert_eq!(Reason::from_wire(r.as_str()), Some(r));
            assert_eq!(Reason::from_pb(r.to_pb()), Some(r));
        }
        // Every protobuf value but UNSPECIFIED has a row.
        for v in 1..64 {
            if let Ok(k) = pb::Kind::try_from(v) {
                assert!(Kind::from_pb(k).is_some(), "{k:?}");
            }
            if let Ok(r) = pb::Reason::try_from(v) {
                assert!(Reason::from_pb(r).is_some(), "{r:?}");
            }
        }
        assert_eq!(Kind::from_pb(pb::Kind::Unspecified), None);
        assert_eq!(Reason::from_pb(pb::Reason::Unspecified), None);
        assert_eq!(Kind::from_wire("vm.compute"), None);
    }
}
