//! The wire decoders under random input: whatever bytes a peer sends, decoding them and
//! turning them into domain types returns a value or an error, never a panic, and what is
//! accepted survives a round trip. Random bytes, and valid messages with bytes flipped, cut
//! or appended, for a bounded number of cases.

use domain::{Assignment, InterpreterProfile, JobResult, LogRequest, RunSpec, WorkerId};
use proptest::prelude::*;
use prost::Message;
use proto::convert::parse_lease_token;
use proto::v1;

/// Decodes `bytes` as each message a peer receives and converts what decodes.
fn decode_everything(bytes: &[u8]) {
    if let Ok(message) = v1::WorkerMessage::decode(bytes) {
        match message.msg {
            Some(v1::worker_message::Msg::Hello(hello)) => {
                let _ = WorkerId::parse(&hello.worker_id);
                let _ = hello.interpreter.map(InterpreterProfile::try_from);
            }
            Some(v1::worker_message::Msg::Outcome(outcome)) => {
                let _ = parse_lease_token("outcome.lease_token", &outcome.lease_token);
                if let Some(result) = outcome.result
                    && let Ok(result) = JobResult::try_from(result.clone())
                {
                    let again = JobResult::try_from(v1::JobResult::from(&result)).expect("a round trip");
                    assert_eq!(again, result);
                }
            }
            Some(v1::worker_message::Msg::Heartbeat(heartbeat)) => {
                for job in heartbeat.running {
                    let _ = parse_lease_token("heartbeat.running.lease_token", &job.lease_token);
                }
            }
            // A chunk's fields are read as they are, checked against the request it answers.
            Some(v1::worker_message::Msg::Credit(_) | v1::worker_message::Msg::LogChunk(_)) | None => {}
        }
    }
    if let Ok(message) = v1::CoordinatorMessage::decode(bytes) {
        match message.msg {
            Some(v1::coordinator_message::Msg::Assignment(assignment)) => {
                let _ = Assignment::try_from(assignment);
            }
            Some(v1::coordinator_message::Msg::LogRequest(request)) => {
                if let Ok(request) = LogRequest::try_from(request) {
                    let again = LogRequest::try_from(v1::LogRequest::from(&request)).expect("a round trip");
                    assert_eq!(again, request);
                }
            }
            _ => {}
        }
    }
    if let Ok(request) = v1::SubmitRunRequest::decode(bytes)
        && let Some(spec) = request.spec
        && let Ok(spec) = RunSpec::try_from(spec)
    {
        let _ = spec.validate();
    }
}

/// Encoded messages of each kind a peer sends, to mutate.
fn valid_messages() -> Vec<Vec<u8>> {
    let outcome = v1::WorkerMessage {
        msg: Some(v1::worker_message::Msg::Outcome(v1::JobOutcome {
            job_id: 7,
            lease_token: uuid::Uuid::nil().to_string(),
            result: Some(v1::JobResult {
                kind: Some(v1::job_result::Kind::Iteration(v1::IterationOutcome {
                    iteration: 1,
                    mode: v1::Mode::Ft as i32,
                    status: v1::IterationStatus::Crash as i32,
                    signal: Some(11),
                    crash_signature: Some("Segmentation fault: f.py:7".into()),
                    evidence_json: r#"{"tests":{"total":2,"passed":1,"failed":1,"errors":0,"skipped":0,"failing":["t::a"]},"log_dir":"/w/l","output_bytes":9}"#.into(),
                    stdout_tail: "tail".into(),
                    ..Default::default()
                })),
            }),
        })),
    };
    let hello = v1::WorkerMessage {
        msg: Some(v1::worker_message::Msg::Hello(v1::Hello {
            worker_id: "w1".into(),
            interpreter: Some(v1::InterpreterProfile {
                version_short: "3.13.5".into(),
                major_minor: "3.13".into(),
                abi_tag: "cp313t".into(),
                free_threaded: true,
                ..Default::default()
            }),
            slots: 2,
            warm_packages: vec!["six".into()],
            agent_version: "0".into(),
        })),
    };
    let assignment = v1::CoordinatorMessage {
        msg: Some(v1::coordinator_message::Msg::Assignment(v1::Assignment {
            job_id: 3,
            lease_token: uuid::Uuid::nil().to_string(),
            attempt: 1,
            run_id: uuid::Uuid::nil().to_string(),
            package: Some(v1::PackageSpec {
                name: "six".into(),
                install_command: "pip install .".into(),
                test_command: "pytest".into(),
                test_framework: "pytest".into(),
                import_name: "six".into(),
                source: Some(v1::package_spec::Source::Git(v1::GitSource {
                    url: "https://example.org/six.git".into(),
                    rev: Some("main".into()),
                    depth: None,
                })),
                ..Default::default()
            }),
            mode: v1::Mode::Ft as i32,
            iteration: 1,
            options: Some(v1::RunOptions {
                timeout_secs: 60,
                stall_threshold_secs: 60,
                ..Default::default()
            }),
        })),
    };
    let log_request = v1::CoordinatorMessage {
        msg: Some(v1::coordinator_message::Msg::LogRequest(v1::LogRequest {
            request_id: 9,
            run_id: uuid::Uuid::nil().to_string(),
            package: "six".into(),
            mode: v1::Mode::Ft as i32,
            iteration: 2,
            attempt: 1,
            stream: v1::LogStream::Stdout as i32,
            offset: 1 << 20,
            max_bytes: 1 << 20,
        })),
    };
    vec![
        outcome.encode_to_vec(),
        hello.encode_to_vec(),
        assignment.encode_to_vec(),
        log_request.encode_to_vec(),
    ]
}

/// A valid message with some bytes flipped, then cut short or extended.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let messages = valid_messages();
    (
        0..messages.len(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        any::<prop::sample::Index>(),
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(move |(which, flips, cut, tail)| {
            let mut bytes = messages[which].clone();
            for (at, byte) in flips {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            bytes.extend(tail);
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_a_decoder(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        decode_everything(&bytes);
    }

    #[test]
    fn mutated_messages_never_panic_a_decoder(bytes in mutated()) {
        decode_everything(&bytes);
    }
}

#[test]
fn the_unmutated_messages_decode_and_convert() {
    let messages = valid_messages();
    let outcome = v1::WorkerMessage::decode(messages[0].as_slice()).expect("outcome");
    let Some(v1::worker_message::Msg::Outcome(outcome)) = outcome.msg else {
        panic!("an outcome")
    };
    JobResult::try_from(outcome.result.expect("result")).expect("a valid outcome converts");
    let assignment = v1::CoordinatorMessage::decode(messages[2].as_slice()).expect("assignment");
    let Some(v1::coordinator_message::Msg::Assignment(assignment)) = assignment.msg else {
        panic!("an assignment")
    };
    Assignment::try_from(assignment).expect("a valid assignment converts");
}
