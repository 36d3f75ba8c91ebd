use super::*;
use yun_model::{Target, parse_manifest};

fn app(replicas: u32, value: &str) -> App {
    let src = format!(
        "apiVersion: core.oam.dev/v1beta1\nkind: Application\nmetadata: {{name: demo}}\nspec:\n  components:\n    - name: web\n      type: webservice\n      properties:\n        cmd: [sleep, '100']\n        env: [{{name: V, value: '{value}'}}]\n      traits: [{{type: scaler, properties: {{replicas: {replicas}}}}}]\n"
    );
    parse_manifest(&src, None, Target::Local).unwrap().apps.remove(0)
}

fn source(msg: &str) -> Source {
    Source { actor: "user:test".into(), message: msg.into(), base_dir: "/tmp".into(), manifest: "m".into() }
}

#[test]
fn reapplying_the_same_spec_creates_no_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.redb")).unwrap();
    assert_eq!(store.apply(&app(1, "a"), source("one")).unwrap(), Applied { revision: 1, created: true });
    assert_eq!(store.apply(&app(1, "a"), source("again")).unwrap(), Applied { revision: 1, created: false });
    assert_eq!(store.apply(&app(2, "a"), source("two")).unwrap(), Applied { revision: 2, created: true });
    assert_eq!(store.revisions("demo").unwrap().len(), 2);
    let applied: Vec<_> =
        store.events(Some("demo"), 0, 100).unwrap().into_iter().filter(|e| e.reason == "Applied").collect();
    assert_eq!(applied.len(), 2);
}

#[test]
fn rollback_makes_a_new_revision_with_the_old_spec() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.redb")).unwrap();
    store.apply(&app(1, "a"), source("one")).unwrap();
    store.apply(&app(1, "b"), source("two")).unwrap();
    let back = store.rollback("demo", Some(1), "user:test").unwrap();
    assert_eq!(back, Applied { revision: 3, created: true });
    let rev = store.revision("demo", 3).unwrap().unwrap();
    assert_eq!(rev.spec, app(1, "a"));
    assert_eq!(rev.message, "rollback to revision 1");
    assert!(matches!(store.rollback("demo", Some(9), "u"), Err(Error::RevisionNotFound { .. })));
    assert!(matches!(store.rollback("nope", None, "u"), Err(Error::AppNotFound(_))));
}

#[test]
fn state_survives_reopen_and_a_second_opener_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let store = Store::open(&path).unwrap();
        store.apply(&app(1, "a"), source("one")).unwrap();
        store
            .update_app("demo", None, |r| {
                r.scale.insert("web".into(), 3);
                Ok(())
            })
            .unwrap();
        assert!(matches!(Store::open(&path), Err(Error::InUse(_))));
    }
    let store = Store::open(&path).unwrap();
    let rec = store.app("demo").unwrap().unwrap();
    assert_eq!(rec.current_revision, 1);
    assert_eq!(rec.scale.get("web"), Some(&3));
}

#[test]
fn a_newer_format_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let db = Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(META).unwrap().insert("format", "99").unwrap();
        tx.commit().unwrap();
    }
    let err = Store::open(&path).err().unwrap();
    assert!(err.to_string().contains("upgrade yun"), "{err}");
    let db = Database::create(&path).unwrap();
    let tx = db.begin_read().unwrap();
    assert_eq!(tx.open_table(META).unwrap().get("format").unwrap().unwrap().value(), "99");
}

#[test]
fn purge_removes_app_and_revisions_and_deleting_apps_refuse_applies() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.redb")).unwrap();
    store.apply(&app(1, "a"), source("one")).unwrap();
    store
        .update_app("demo", None, |r| {
            r.deleting = true;
            Ok(())
        })
        .unwrap();
    assert!(matches!(store.apply(&app(1, "b"), source("x")), Err(Error::Deleting(_))));
    store.purge("demo").unwrap();
    assert!(store.app("demo").unwrap().is_none());
    assert!(store.revisions("demo").unwrap().is_empty());
}
