//! Token limits on top of project limits, on a manual clock.

use kv_engine::{
    ManualClock,
    catalog::{CatalogChange, TokenLimits, TokenMeta},
};

use super::*;

fn shop() -> ProjectName {
    ProjectName::parse("shop").unwrap()
}

/// Limits with `catalog` holding project `shop` under `quota` and tokens
/// `a` and `b` of it; the clock stands 250 ms into a second.
fn limits(quota: Quota) -> (RateLimits, Arc<ManualClock>, Arc<Catalog>) {
    let clock = Arc::new(ManualClock::new(1_000_000_250));
    let catalog = Arc::new(Catalog::default());
    catalog.apply(&CatalogChange::PutProject {
        project: shop(),
        quota,
    });
    for id in ["a", "b"] {
        catalog.apply(&CatalogChange::PutToken(TokenMeta {
            id: id.into(),
            project: shop(),
            read_only: false,
            secret_sha256: [0; 32],
            created_at_ms: 0,
            limits: TokenLimits::default(),
        }));
    }
    let limits = RateLimits::new(catalog.clone(), Quota::UNLIMITED, clock.clone());
    (limits, clock, catalog)
}

fn token(id: &str, ops: Option<u64>, bytes: Option<u64>) -> TokenRate {
    TokenRate::new(
        id,
        TokenLimits {
            ops_per_second: ops,
            write_bytes_per_second: bytes,
        },
    )
    .unwrap()
}

#[test]
fn a_token_is_held_to_its_limit_and_another_token_is_not() {
    let (limits, clock, _) = limits(Quota::UNLIMITED);
    let a = token("a", Some(20), None);
    let b = token("b", Some(1000), None);
    for second in 0..2 {
        for i in 0..20 {
            assert!(
                limits.admit_with(&shop(), Some(&a), 0).is_ok(),
                "second {second} call {i}"
            );
        }
        let refused = limits.admit_with(&shop(), Some(&a), 0).unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert_eq!(
            refused.message(),
            "token a is over its limit of 20 operations per second (token ops_per_second); retry after 750 ms"
        );
        assert_eq!(retry_after_ms(refused.metadata()), Some(750));
        for _ in 0..100 {
            limits.admit_with(&shop(), Some(&b), 0).unwrap();
        }
        limits.admit(&shop(), 0).unwrap();
        clock.advance(1000);
    }
}

#[test]
fn the_project_limit_holds_across_tokens_and_refusals_count_nowhere() {
    let (limits, _, _) = limits(Quota {
        ops_per_second: Some(10),
        ..Quota::UNLIMITED
    });
    let a = token("a", Some(6), None);
    let b = token("b", Some(6), None);
    for _ in 0..6 {
        limits.admit_with(&shop(), Some(&a), 0).unwrap();
    }
    // Refused by the token: the project's window does not count them.
    for _ in 0..5 {
        let refused = limits.admit_with(&shop(), Some(&a), 0).unwrap_err();
        assert!(
            refused.message().starts_with("token a "),
            "{}",
            refused.message()
        );
    }
    for _ in 0..4 {
        limits.admit_with(&shop(), Some(&b), 0).unwrap();
    }
    // The project is full at 10: b has room of its own but is refused.
    let refused = limits.admit_with(&shop(), Some(&b), 0).unwrap_err();
    assert!(
        refused.message().starts_with(
            "project shop is over its limit of 10 operations per second (quota ops_per_second)"
        ),
        "{}",
        refused.message()
    );
    assert!(limits.admit(&shop(), 0).is_err());
}

#[test]
fn a_token_refused_by_its_project_keeps_its_room() {
    let (limits, _, _) = limits(Quota {
        write_bytes_per_second: Some(100),
        ..Quota::UNLIMITED
    });
    let a = token("a", Some(3), None);
    limits.admit(&shop(), 90).unwrap();
    for _ in 0..5 {
        let refused = limits.admit_with(&shop(), Some(&a), 20).unwrap_err();
        assert!(
            refused.message().starts_with("project shop "),
            "{}",
            refused.message()
        );
    }
    // Those refusals were not charged to the token: its 3 calls remain.
    for _ in 0..3 {
        limits.admit_with(&shop(), Some(&a), 0).unwrap();
    }
    let refused = limits.admit_with(&shop(), Some(&a), 0).unwrap_err();
    assert!(
        refused.message().starts_with("token a "),
        "{}",
        refused.message()
    );
}

#[test]
fn token_bytes_are_limited() {
    let (limits, clock, _) = limits(Quota::UNLIMITED);
    let a = token("a", None, Some(100));
    limits.admit_with(&shop(), Some(&a), 60).unwrap();
    limits.admit_with(&shop(), Some(&a), 40).unwrap();
    // Reads write nothing, and the token has no ops limit.
    for _ in 0..50 {
        limits.admit_with(&shop(), Some(&a), 0).unwrap();
    }
    let refused = limits.admit_with(&shop(), Some(&a), 1).unwrap_err();
    assert_eq!(
        refused.message(),
        "token a is over its limit of 100 bytes written per second (token write_bytes_per_second): 100 written in this second, this write is 1; retry after 750 ms"
    );
    let never = limits.admit_with(&shop(), Some(&a), 101).unwrap_err();
    assert!(
        never.message().contains(
            "larger than token a's limit of 100 bytes written per second (token write_bytes_per_second); it can never be admitted"
        ),
        "{}",
        never.message()
    );
    assert_eq!(retry_after_ms(never.metadata()), None);
    // Another token of the project writes freely.
    let b = token("b", Some(1000), None);
    limits.admit_with(&shop(), Some(&b), 500).unwrap();
    clock.advance(750);
    limits.admit_with(&shop(), Some(&a), 100).unwrap();
}

#[test]
fn zero_or_absent_token_limits_are_no_limit() {
    assert!(TokenRate::new("a", TokenLimits::default()).is_none());
    let zero = TokenLimits {
        ops_per_second: Some(0),
        write_bytes_per_second: Some(0),
    };
    assert!(TokenRate::new("a", zero).is_none());
    assert!(TokenRate::of(&Caller::Admin).is_none());
    assert!(TokenRate::of(&Caller::Open).is_none());
}

#[test]
fn revoked_and_idle_token_windows_are_swept() {
    let (limits, clock, catalog) = limits(Quota {
        ops_per_second: Some(1000),
        ..Quota::UNLIMITED
    });
    let a = token("a", Some(5), None);
    let b = token("b", Some(5), None);
    limits.admit_with(&shop(), Some(&a), 0).unwrap();
    limits.admit_with(&shop(), Some(&b), 0).unwrap();
    assert_eq!(limits.token_windows_held(), 2);
    catalog.apply(&CatalogChange::RevokeToken { id: "a".into() });
    // One second on: b's window is recent and kept, a's goes because a
    // was revoked.
    clock.advance(1000);
    limits.admit(&shop(), 0).unwrap();
    assert_eq!(limits.token_windows_held(), 1);
    // Two seconds idle: b's goes too.
    clock.advance(2000);
    limits.admit(&shop(), 0).unwrap();
    assert_eq!(limits.token_windows_held(), 0);
}
