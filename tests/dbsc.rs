//! Device Bound Session Credentials (SPEC §16) through the proxy, with a test client that
//! holds a device key (EC P-256, or the RSA-2048 key in `tests/data`): registration,
//! refresh, a wrong-key proof, replayed challenges, an expired bound cookie, and a stolen
//! long cookie used without the key; on the memory store and on Redis (two proxies sharing
//! one, skipped with a message when `redis-server` is absent, except in CI).

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::Method;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
    RsaPublicKeyComponents,
};
use serde_json::{Value, json};
use support::redis_server::RedisServer;
use support::*;

const REGISTER: &str = "/.well-known/sessiongate/dbsc/register";
const REFRESH: &str = "/.well-known/sessiongate/dbsc/refresh";
const DBSC: &str = "[dbsc]\nenabled = true\n";

/// The application: `/login` logs user 1 in, `/logout` logs out, `/update` changes the
/// session in place, anything else answers
/// with the session the proxy forwarded (`none` without one).
fn app(req: &Seen) -> Reply {
    match req.path.as_str() {
        "/login" => Reply::ok().header("x-session-set", r#"{"userId":1}"#),
        "/logout" => Reply::ok().header("x-session-destroy", "1"),
        "/update" => Reply::ok().header("x-session-update", r#"{"n":1}"#),
        _ => Reply::ok().body(if req.header("x-session").is_some() {
            "session"
        } else {
            "none"
        }),
    }
}

/// The device key of the test client.
enum DeviceKey {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

impl DeviceKey {
    fn ec() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        Self::Ec(
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                .unwrap(),
        )
    }

    /// A fixed RSA-2048 key: RSAPrivateKey DER, made once with `openssl genpkey -algorithm
    /// RSA -pkeyopt rsa_keygen_bits:2048 -outform DER`.
    fn rsa() -> Self {
        let der = include_bytes!("data/dbsc_rsa_2048.der");
        Self::Rsa(RsaKeyPair::from_der(der).unwrap())
    }

    fn alg(&self) -> &'static str {
        match self {
            Self::Ec(_) => "ES256",
            Self::Rsa(_) => "RS256",
        }
    }

    fn jwk(&self) -> Value {
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        match self {
            Self::Ec(pair) => {
                let point = pair.public_key().as_ref();
                json!({"kty":"EC","crv":"P-256","x":b64(&point[1..33]),"y":b64(&point[33..])})
            }
            Self::Rsa(pair) => {
                let c = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
                json!({"kty":"RSA","n":b64(&c.n),"e":b64(&c.e)})
            }
        }
    }

    /// A proof (`typ` dbsc+jwt) answering `challenge`; with the JWK in the header when
    /// `with_key` (registration), as Chrome sends it.
    fn proof(&self, challenge: &str, with_key: bool) -> String {
        let mut header = json!({"alg": self.alg(), "typ": "dbsc+jwt"});
        if with_key {
            header["jwk"] = self.jwk();
        }
        let payload = json!({"jti": challenge, "iat": 1_700_000_000});
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload.to_string())
        );
        let rng = SystemRandom::new();
        let sig = match self {
            Self::Ec(pair) => pair
                .sign(&rng, signed.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec(),
            Self::Rsa(pair) => {
                let mut sig = vec![0; pair.public().modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, signed.as_bytes(), &mut sig)
                    .unwrap();
                sig
            }
        };
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

/// The value of parameter `name="..."` in a structured header.
fn param(header: &str, name: &str) -> String {
    let start = header
        .find(&format!("{name}=\""))
        .unwrap_or_else(|| panic!("no {name} in {header}"))
        + name.len()
        + 2;
    header[start..][..header[start..].find('"').unwrap()].to_owned()
}

/// The challenge of a `Secure-Session-Challenge` header: `"C";id="S"`.
fn challenge_of(res: &Res) -> (String, String) {
    let h = res
        .header("secure-session-challenge")
        .unwrap_or_else(|| panic!("no challenge in {} {:?}", res.status, res.headers));
    let c = h.strip_prefix('"').unwrap();
    (c[..c.find('"').unwrap()].to_owned(), param(h, "id"))
}

async fn post(gate: &Gate, path: &str, headers: &[(&str, &str)]) -> Res {
    gate.send(Method::POST, path, headers, "").await
}

/// A browser's cookie jar for one site, as far as the test needs one.
struct Browser {
    key: DeviceKey,
    long: String,
    bound: Option<String>,
    session_id: String,
}

impl Browser {
    /// Logs in, registers `key` with the challenge offered, and checks the configuration.
    async fn login_and_register(gate: &Gate, key: DeviceKey) -> Self {
        let login = gate.get("/login").await;
        assert_eq!(login.status, 200);
        let offer = login
            .header("secure-session-registration")
            .expect("registration offered on login")
            .to_owned();
        assert!(offer.starts_with("(ES256 RS256);"), "{offer}");
        assert_eq!(param(&offer, "path"), REGISTER);
        let long = login.session_cookie();
        // Not yet registered: the long cookie alone is the session, as without DBSC.
        assert_eq!(
            gate.get_with("/", &[("cookie", &long)]).await.text(),
            "session"
        );

        let proof = key.proof(&param(&offer, "challenge"), true);
        let res = post(
            gate,
            REGISTER,
            &[("cookie", &long), ("secure-session-response", &proof)],
        )
        .await;
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(res.header("cache-control"), Some("no-store"));
        let config: Value = serde_json::from_slice(&res.body).unwrap();
        assert_eq!(config["refresh_url"], REFRESH);
        assert_eq!(config["credentials"][0]["type"], "cookie");
        assert_eq!(config["credentials"][0]["name"], "session_bound");
        assert_eq!(
            config["credentials"][0]["attributes"],
            "Path=/; HttpOnly; SameSite=Lax"
        );
        let set = &res.set_cookies("session_bound")[0];
        assert!(
            set.contains("Max-Age=") && set.contains("HttpOnly"),
            "{set}"
        );
        let bound = res.cookie_value("session_bound").unwrap();
        Self {
            key,
            long,
            bound: Some(format!("session_bound={bound}")),
            session_id: config["session_identifier"].as_str().unwrap().to_owned(),
        }
    }

    fn cookies(&self) -> String {
        match &self.bound {
            Some(b) => format!("{}; {b}", self.long),
            None => self.long.clone(),
        }
    }

    async fn get(&self, gate: &Gate, path: &str) -> Res {
        gate.get_with(path, &[("cookie", &self.cookies())]).await
    }

    /// The refresh: a 403 challenge round, then the proof.
    async fn refresh(&mut self, gate: &Gate) -> Res {
        let res = post(
            gate,
            REFRESH,
            &[
                ("cookie", &self.cookies()),
                ("sec-secure-session-id", &self.session_id),
            ],
        )
        .await;
        assert_eq!(res.status, 403);
        let (challenge, id) = challenge_of(&res);
        assert_eq!(id, self.session_id);
        let res = self.answer(gate, &self.key.proof(&challenge, false)).await;
        if let Some(v) = res.cookie_value("session_bound") {
            self.bound = Some(format!("session_bound={v}"));
        }
        res
    }

    async fn answer(&self, gate: &Gate, proof: &str) -> Res {
        post(
            gate,
            REFRESH,
            &[
                ("cookie", &self.cookies()),
                ("sec-secure-session-id", &self.session_id),
                ("secure-session-response", proof),
            ],
        )
        .await
    }
}

/// The whole protocol with one device key, on one proxy.
async fn protocol_with(key: DeviceKey) {
    let up = upstream(app).await;
    let gate = gate(up.addr).toml(DBSC).run().await;
    let mut browser = Browser::login_and_register(&gate, key).await;
    let set = browser.get(&gate, "/").await;
    assert!(set.set_cookies("session_bound").is_empty());

    // Both cookies: the session; the upstream never sees the bound cookie.
    assert_eq!(browser.get(&gate, "/").await.text(), "session");
    assert!(
        !up.last()
            .header("cookie")
            .is_some_and(|c| c.contains("session_bound")),
        "the bound cookie reached the upstream"
    );
    // The stolen long cookie without the key: no session for the upstream, and the
    // cookie is not cleared (the browser refreshes and retries).
    let stolen = gate.get_with("/", &[("cookie", &browser.long)]).await;
    assert_eq!(stolen.text(), "none");
    assert!(stolen.set_cookies("session").is_empty());
    assert!(up.last().header("x-session").is_none());
    // Nor with a bound cookie forged or made for another session.
    let forged = format!("{}; session_bound={}", browser.long, "A".repeat(32));
    assert_eq!(
        gate.get_with("/", &[("cookie", &forged)]).await.text(),
        "none"
    );

    // An update in place keeps the binding.
    browser.get(&gate, "/update").await;
    assert_eq!(
        gate.get_with("/", &[("cookie", &browser.long)])
            .await
            .text(),
        "none"
    );

    // Refresh: challenge round, proof, a fresh bound cookie that works.
    let res = browser.refresh(&gate).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert!(res.cookie_value("session_bound").is_some());
    assert_eq!(browser.get(&gate, "/").await.text(), "session");

    // A wrong key: signed by another device over a fresh challenge.
    let res = post(&gate, REFRESH, &[("cookie", &browser.cookies())]).await;
    let (challenge, _) = challenge_of(&res);
    let thief = DeviceKey::ec();
    let res = browser.answer(&gate, &thief.proof(&challenge, false)).await;
    assert_eq!(res.status, 403, "a wrong key's proof was accepted");
    assert!(res.cookie_value("session_bound").is_none());
    challenge_of(&res);

    // A replayed refresh challenge: the proof of the last refresh, sent again.
    let res = post(&gate, REFRESH, &[("cookie", &browser.cookies())]).await;
    let (challenge, _) = challenge_of(&res);
    let proof = browser.key.proof(&challenge, false);
    assert_eq!(browser.answer(&gate, &proof).await.status, 200);
    let replay = browser.answer(&gate, &proof).await;
    assert_eq!(replay.status, 403, "a replayed challenge was accepted");
    assert!(replay.cookie_value("session_bound").is_none());
    // A registration challenge is no refresh challenge (and the other way round).
    let login = gate.get("/login").await;
    let other_offer = param(
        login.header("secure-session-registration").unwrap(),
        "challenge",
    );
    let res = browser
        .answer(&gate, &browser.key.proof(&other_offer, false))
        .await;
    assert_eq!(res.status, 403);

    // A replayed registration: refused, and the registered key stays.
    let res = post(
        &gate,
        REGISTER,
        &[
            ("cookie", &browser.cookies()),
            ("secure-session-response", &thief.proof(&challenge, true)),
        ],
    )
    .await;
    assert_eq!(res.status, 400);
    assert_eq!(browser.get(&gate, "/").await.text(), "session");

    // The endpoints are the proxy's own: never forwarded, POST only.
    let before = up.count();
    assert_eq!(gate.get(REFRESH).await.status, 405);
    assert_eq!(
        post(&gate, "/.well-known/sessiongate/dbsc/other", &[])
            .await
            .status,
        404
    );
    assert_eq!(post(&gate, REGISTER, &[]).await.status, 401);
    assert_eq!(up.count(), before);

    // Logout ends the binding: the refresh tells the browser to end its session.
    browser.get(&gate, "/logout").await;
    let res = post(
        &gate,
        REFRESH,
        &[
            ("cookie", &browser.cookies()),
            ("sec-secure-session-id", &browser.session_id),
        ],
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), r#"{"continue":false}"#);
}

#[tokio::test]
async fn es256_device_registers_refreshes_and_a_stolen_cookie_stops_working() {
    protocol_with(DeviceKey::ec()).await;
}

#[tokio::test]
async fn rs256_device_registers_refreshes_and_a_stolen_cookie_stops_working() {
    protocol_with(DeviceKey::rsa()).await;
}

#[tokio::test]
async fn an_expired_bound_cookie_is_no_session_until_refreshed() {
    let up = upstream(app).await;
    let gate = gate(up.addr)
        .toml("[dbsc]\nenabled = true\nbound_cookie_sec = 1\n")
        .run()
        .await;
    let mut browser = Browser::login_and_register(&gate, DeviceKey::ec()).await;
    // Deadline-polled: the bound cookie stops working once its second has passed.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while browser.get(&gate, "/").await.text() == "session" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bound cookie never expired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(browser.refresh(&gate).await.status, 200);
    assert_eq!(browser.get(&gate, "/").await.text(), "session");
}

#[tokio::test]
async fn browsers_that_never_register_work_as_before() {
    let up = upstream(app).await;
    let gate = gate(up.addr).toml(DBSC).run().await;
    let login = gate.get("/login").await;
    assert!(login.header("secure-session-registration").is_some());
    let long = login.session_cookie();
    for _ in 0..3 {
        assert_eq!(
            gate.get_with("/", &[("cookie", &long)]).await.text(),
            "session"
        );
    }
    // A refresh of a session that never registered ends the browser's DBSC session.
    let res = post(&gate, REFRESH, &[("cookie", &long)]).await;
    assert_eq!(res.text(), r#"{"continue":false}"#);
}

#[tokio::test]
async fn without_dbsc_nothing_is_offered_and_the_paths_are_forwarded() {
    let up = upstream(app).await;
    let gate = gate(up.addr).run().await;
    let login = gate.get("/login").await;
    assert!(login.header("secure-session-registration").is_none());
    let res = post(&gate, REFRESH, &[("cookie", &login.session_cookie())]).await;
    assert_eq!(res.text(), "session");
    assert_eq!(up.last().path, REFRESH);
}

/// Awaits `futures`, polled together (requests in flight at once); their statuses in order.
async fn statuses<F: Future<Output = Res>>(futures: impl IntoIterator<Item = F>) -> Vec<u16> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut statuses: Vec<Option<u16>> = vec![None; futures.len()];
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, status) in futures.iter_mut().zip(statuses.iter_mut()) {
            if status.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(res) => *status = Some(res.status),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    statuses.into_iter().map(Option::unwrap).collect()
}

/// Two proxies sharing one Redis: the binding is stored sealed (format 4), either proxy
/// checks the other's bound cookie and challenges, and a challenge answered on one proxy
/// is refused on the other, also when one proof races itself on both.
#[tokio::test]
async fn on_redis_the_binding_is_sealed_and_shared_between_proxies() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let store = format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\ntimeout_ms = 2000\n",
        redis.url()
    );
    let up = upstream(app).await;
    let a = gate(up.addr).toml(DBSC).toml(&store).run().await;
    let b = gate(up.addr).toml(DBSC).toml(&store).run().await;
    let browser = Browser::login_and_register(&a, DeviceKey::ec()).await;

    let dump = redis.dump();
    assert_eq!(dump.len(), 1);
    let (_, value) = &dump[0];
    assert_eq!(value[0], 4, "format version of a bound session");
    let jwk = browser.key.jwk();
    let x = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
    assert!(
        !value.windows(x.len()).any(|w| w == x.as_slice()),
        "the public key is stored in clear"
    );

    assert_eq!(browser.get(&b, "/").await.text(), "session");
    assert_eq!(
        b.get_with("/", &[("cookie", &browser.long)]).await.text(),
        "none"
    );
    // A challenge from proxy a, answered on b; the same proof again on a is refused.
    let res = post(&a, REFRESH, &[("cookie", &browser.cookies())]).await;
    let (challenge, _) = challenge_of(&res);
    let proof = browser.key.proof(&challenge, false);
    assert_eq!(browser.answer(&b, &proof).await.status, 200);
    assert_eq!(browser.answer(&a, &proof).await.status, 403);
    // One proof sent 16 times at once, to both proxies: exactly one is accepted.
    let res = post(&b, REFRESH, &[("cookie", &browser.cookies())]).await;
    let (challenge, _) = challenge_of(&res);
    let proof = browser.key.proof(&challenge, false);
    let answers = (0..16).map(|i| browser.answer(if i % 2 == 0 { &a } else { &b }, &proof));
    let statuses = statuses(answers).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 403),
        "{statuses:?}"
    );
    // An update in place keeps the binding.
    browser.get(&a, "/update").await;
    assert_eq!(browser.get(&b, "/").await.text(), "session");
    assert_eq!(
        a.get_with("/", &[("cookie", &browser.long)]).await.text(),
        "none"
    );
}
