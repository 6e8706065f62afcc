use super::*;

fn kinds(text: &str) -> Vec<(PiiKind, &str)> {
    scan(text).into_iter().map(|s| (s.kind, &text[s.start..s.end])).collect()
}

/// Each text's one finding is a secret, the value given.
fn each_is_one_secret(cases: &[(&str, &str)]) {
    for (text, value) in cases {
        assert_eq!(kinds(text), vec![(PiiKind::Secret, *value)], "{text}");
    }
}

/// No text holds a secret (other kinds may be found).
fn no_secret_in(texts: &[&str]) {
    for text in texts {
        assert!(kinds(text).iter().all(|(k, _)| *k != PiiKind::Secret), "{text}: {:?}", kinds(text));
    }
}

#[test]
fn finds_each_kind_in_running_text() {
    let cases = [
        ("Write to jane.doe+news@example.co.uk today.", PiiKind::Email, "jane.doe+news@example.co.uk"),
        ("Ruf mich an: +49 30 1234567, danke", PiiKind::Phone, "+49 30 1234567"),
        ("Card 4111 1111 1111 1111 expires soon", PiiKind::CreditCard, "4111 1111 1111 1111"),
        ("IBAN: DE89 3704 0044 0532 0130 00 bitte", PiiKind::Iban, "DE89 3704 0044 0532 0130 00"),
        ("SSN 123-45-6789.", PiiKind::UsSsn, "123-45-6789"),
        ("NI number AB 12 34 56 C on file", PiiKind::UkNino, "AB 12 34 56 C"),
        ("Codice fiscale RSSMRA85T10A562S grazie", PiiKind::ItCodiceFiscale, "RSSMRA85T10A562S"),
        ("DNI 12345678Z.", PiiKind::EsDni, "12345678Z"),
        ("NIE X1234567L", PiiKind::EsNie, "X1234567L"),
        ("from 192.168.10.20 at noon", PiiKind::IpAddress, "192.168.10.20"),
        ("host 2001:db8:85a3::8a2e:370:7334 down", PiiKind::IpAddress, "2001:db8:85a3::8a2e:370:7334"),
        ("key sk-proj-abcdefghijklmnopqrstuvwxyz012345", PiiKind::Secret, "sk-proj-abcdefghijklmnopqrstuvwxyz012345"),
        ("aws AKIAIOSFODNN7EXAMPLE ok", PiiKind::Secret, "AKIAIOSFODNN7EXAMPLE"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIE", PiiKind::Secret, "-----BEGIN RSA PRIVATE KEY-----"),
    ];
    for (text, kind, value) in cases {
        assert_eq!(kinds(text), vec![(kind, value)], "{text}");
    }
}

#[test]
fn french_nir_with_valid_key_is_found() {
    let n: u64 = 1_841_276_451_089;
    let text = format!("Mon numéro: {n}{:02}.", 97 - n % 97);
    assert_eq!(kinds(&text).len(), 1, "{text}");
    assert_eq!(kinds(&text)[0].0, PiiKind::FrNir);
}

#[test]
fn jwt_is_a_secret() {
    let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    assert_eq!(kinds(&format!("Bearer {jwt}")), vec![(PiiKind::Secret, jwt)]);
}

#[test]
fn hard_negatives_are_not_pii() {
    for text in [
        "Order #4839201 shipped on 15.03.2024 for 1.234,56 €.",
        "Invoice INV-000123 dated 2024-03-15, total $1,299.00.",
        "Upgrade to v2.13.4 or 1.0.0-rc.2; Python 3.11.7 works.",
        "ISBN 978-3-16-148410-0 and 0-306-40615-2 are in stock.",
        "Tracking 1Z999AA10123456784 via UPS, ORD-2024-118842.",
        "The meeting is at 10:30 in room 204; 25% off today.",
        "Card-like order id 1111111111111117 is not a card.",
        "IBAN-shaped DE89 3704 0044 0532 0130 01 has a bad checksum.",
    ] {
        assert_eq!(kinds(text), vec![], "{text}");
    }
}

#[test]
fn card_followed_by_a_date_keeps_the_card_only() {
    assert_eq!(kinds("4111 1111 1111 1111 2024-05-01"), vec![(PiiKind::CreditCard, "4111 1111 1111 1111")]);
}

#[test]
fn several_findings_are_counted_by_kind() {
    let text = "a@b.io, c@d.io and 123-45-6789";
    let counts = pii_counts(&scan(text));
    assert_eq!(counts.get("email"), Some(&2));
    assert_eq!(counts.get("us_ssn"), Some(&1));
}

#[test]
fn non_ascii_text_scans_without_panicking() {
    let text = "Grüße aus Köln — ☎ +49 221 1234567 · ✉ jörg@example.de · 日本語テキスト";
    let found = kinds(text);
    assert!(found.contains(&(PiiKind::Phone, "+49 221 1234567")), "{found:?}");
    assert!(found.contains(&(PiiKind::Email, "jörg@example.de")), "{found:?}");
}


#[test]
fn phones_after_other_clauses_and_numbers() {
    for (text, phone) in [
        ("I have a problem with my account. mobile +1 (443) 593-0454 (after 5pm)", "+1 (443) 593-0454"),
        ("with my account. Call me back on (0808)1570463. pls", "(0808)1570463"),
        ("Tel.: +49(0)7213 01013 3724521", "+49(0)7213 01013"),
        ("my account. -> 1-243-752-2732 Authorization", "1-243-752-2732"),
        ("Postcode 74473 Tel: +1-366-715-3069 export", "+1-366-715-3069"),
    ] {
        assert!(kinds(text).contains(&(PiiKind::Phone, phone)), "{text}: {:?}", kinds(text));
    }
}

#[test]
fn numbers_written_with_other_digits_spaces_and_dashes_are_found_and_span_what_was_written() {
    for (text, kind, value) in [
        ("appelle le 06\u{00A0}12\u{00A0}34\u{00A0}56\u{00A0}78 stp", PiiKind::Phone, "06\u{00A0}12\u{00A0}34\u{00A0}56\u{00A0}78"),
        ("call 415–555–0132 today", PiiKind::Phone, "415–555–0132"),
        ("card ４１１１ １１１１ １１１１ １１１１ ok", PiiKind::CreditCard, "４１１１ １１１１ １１１１ １１１１"),
        ("card 4111\u{202F}1111\u{202F}1111\u{202F}1111 ok", PiiKind::CreditCard, "4111\u{202F}1111\u{202F}1111\u{202F}1111"),
        ("card\t4111\t1111\t1111\t1111 ok", PiiKind::CreditCard, "4111\t1111\t1111\t1111"),
        ("card 4111.1111.1111.1111 ok", PiiKind::CreditCard, "4111.1111.1111.1111"),
        ("iban de89 3704 0044 0532 0130 00 ok", PiiKind::Iban, "de89 3704 0044 0532 0130 00"),
        ("iban DE89\u{00A0}3704\u{00A0}0044\u{00A0}0532\u{00A0}0130\u{00A0}00 ok", PiiKind::Iban, "DE89\u{00A0}3704\u{00A0}0044\u{00A0}0532\u{00A0}0130\u{00A0}00"),
        ("ssn ١٢٣-٤٥-٦٧٨٩ ok", PiiKind::UsSsn, "١٢٣-٤٥-٦٧٨٩"),
        ("write to mary.o'connor@example.ie now", PiiKind::Email, "mary.o'connor@example.ie"),
        ("write to john.\u{00AD}doe@example.com now", PiiKind::Email, "john.\u{00AD}doe@example.com"),
    ] {
        assert_eq!(kinds(text), vec![(kind, value)], "{text}");
    }
}

#[test]
fn addresses_in_urls_with_ports_and_prefixes_are_found() {
    for (text, value) in [
        ("db at 10.0.0.5:8080 is down", "10.0.0.5"),
        ("GET http://10.0.0.5/x failed", "10.0.0.5"),
        ("see https://203.0.113.7:8443/api", "203.0.113.7"),
        ("ip:10.0.0.5 blocked", "10.0.0.5"),
        ("subnet 10.0.0.5/24 here", "10.0.0.5"),
    ] {
        assert_eq!(kinds(text), vec![(PiiKind::IpAddress, value)], "{text}");
    }
}

#[test]
fn dotted_decimals_and_versions_are_still_not_cards() {
    for text in ["pi is 3.14159265358979323", "build 4.5678901234567 done", "v1.2.3.4 released", "ratio 4111.11111111.1111"] {
        assert!(kinds(text).iter().all(|(k, _)| *k != PiiKind::CreditCard), "{text}: {:?}", kinds(text));
    }
}

#[test]
fn lists_of_decimals_are_not_phone_numbers() {
    for text in ["pi: 3.14 3.14 3.14 3.14 3.14 3.14 3.14 3.14 3.14", "weights 1.5 2.25 10.0 7.75 done", "x = [0.12 0.34 0.56 0.78]"] {
        assert!(kinds(text).is_empty(), "{text}: {:?}", kinds(text));
    }
    // A phone number beside decimals is still found.
    assert_eq!(kinds("ratio 3.14, call 020 7946 0958"), vec![(PiiKind::Phone, "020 7946 0958")]);
}

/// Long runs of numbers (a pasted table) are scanned in time linear in their length: each
/// candidate stops a little past the longest value of its kind. (Unbounded, a 40 KB run of
/// `0.5 ` took minutes.) The values found around such runs are unchanged.
#[test]
fn long_runs_of_numbers_are_scanned_in_linear_time_and_keep_their_findings() {
    for unit in ["0.5 ", "1234 5678 ", "1 ", "12-", "::", "ab:", "1.", "1/", "DE89 "] {
        let run = unit.repeat(200_000 / unit.len());
        let text = format!("mail jane@example.org {run} card 4111 1111 1111 1111 end");
        let found = kinds(&text);
        assert_eq!(found.first(), Some(&(PiiKind::Email, "jane@example.org")), "{unit:?}");
        assert_eq!(found.last(), Some(&(PiiKind::CreditCard, "4111 1111 1111 1111")), "{unit:?}");
    }
}


#[test]
fn a_url_encoded_email_is_found_as_written() {
    let text = "unsubscribe: https://news.test/u?email=jane.doe%40example.com&list=7";
    assert_eq!(kinds(text), vec![(PiiKind::Email, "jane.doe%40example.com")]);
    let tabbed = "card\t4111\t1111\t1111\t1111 on file";
    assert_eq!(kinds(tabbed), vec![(PiiKind::CreditCard, "4111\t1111\t1111\t1111")]);
}

#[test]
fn values_in_csv_rows_and_key_value_pairs_are_found() {
    let csv = "id,name,ssn,card\n1,Bob,123-45-6789,4111111111111111\n2,Ann,078-05-1120,5500005555555559";
    let found: Vec<PiiKind> = scan(csv).into_iter().map(|s| s.kind).collect();
    assert_eq!(found, [PiiKind::UsSsn, PiiKind::CreditCard, PiiKind::UsSsn, PiiKind::CreditCard], "{csv}");
    for (text, kind, value) in [
        ("card:4111111111111111", PiiKind::CreditCard, "4111111111111111"),
        ("[INFO] card_number:4111111111111111 ok", PiiKind::CreditCard, "4111111111111111"),
        ("SSN:123-45-6789", PiiKind::UsSsn, "123-45-6789"),
        ("x,123-45-6789", PiiKind::UsSsn, "123-45-6789"),
        ("DNI:12345678Z", PiiKind::EsDni, "12345678Z"),
        ("4111111111111111,12/27,123", PiiKind::CreditCard, "4111111111111111"),
        ("Phone:(415) 555-0198", PiiKind::Phone, "(415) 555-0198"),
        ("x,(415) 555-0198,Bob", PiiKind::Phone, "(415) 555-0198"),
        ("phone:+14155550132", PiiKind::Phone, "+14155550132"),
        ("x,10.1.2.3", PiiKind::IpAddress, "10.1.2.3"),
    ] {
        assert_eq!(kinds(text), vec![(kind, value)], "{text}");
    }
}

#[test]
fn a_decimal_comma_or_a_time_still_continues_a_number() {
    for text in ["pi is 3,14159265358979", "at 10:20:4155550132", "ratio 1:4155550132"] {
        assert!(kinds(text).iter().all(|(k, _)| *k != PiiKind::Phone), "{text}: {:?}", kinds(text));
    }
}

#[test]
fn lists_of_numbers_and_versions_are_not_pii() {
    for text in [
        "Compare revenue for 2019 2020 2021 2022 please",
        "sizes 1024 2048 4096",
        "ports 8080 8081 8082 8083 are open",
        "ids 1001 1002 1003 1004",
        "scores: 98 87 76 65 54 43",
        "product code 30 12 45 67 89",
        "Version 1.2.3.4 is out",
        "firmware: 10.4.2.1",
        "allow 0.0.0.0/0 and 255.255.255.255",
    ] {
        assert_eq!(kinds(text), vec![], "{text}");
    }
    // Still found: French and UK numbers in such groups, and addresses after other words.
    assert_eq!(kinds("appelez le 01 23 45 67 89"), vec![(PiiKind::Phone, "01 23 45 67 89")]);
    assert_eq!(kinds("host 10.4.2.1 down"), vec![(PiiKind::IpAddress, "10.4.2.1")]);
}

#[test]
fn values_after_a_numeric_csv_field_are_found_and_decimals_are_not_phones() {
    for (text, kind, value) in [
        ("17,42,+14155552671", PiiKind::Phone, "+14155552671"),
        ("17,42,(415) 555-2671", PiiKind::Phone, "(415) 555-2671"),
        ("17,42,415-555-2671", PiiKind::Phone, "415-555-2671"),
        ("ts,status,ip\n1700000000,200,203.0.113.7", PiiKind::IpAddress, "203.0.113.7"),
        ("17,42,10.1.2.3", PiiKind::IpAddress, "10.1.2.3"),
    ] {
        assert_eq!(kinds(text), vec![(kind, value)], "{text}");
    }
    for text in ["ID 4155552671,5 wins", "Summe: 421.884.663,74 EUR", "Betrag: 300.461.500,00 €"] {
        assert!(kinds(text).iter().all(|(k, _)| *k != PiiKind::Phone), "{text}: {:?}", kinds(text));
    }
}

#[test]
fn a_secret_written_after_its_name_is_found_without_the_name() {
    let cases = [
        ("password: hunter2", "hunter2"),
        ("DB_PASSWORD=s3cr3tPass", "s3cr3tPass"),
        (r#"{"api_key": "a1b2c3d4e5f6"}"#, "a1b2c3d4e5f6"),
        ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        ("export GITLAB_TOKEN='glpat-Xy12abCD34efGH56'", "glpat-Xy12abCD34efGH56"),
        ("callback https://app.example/cb?token=9f8e7d6c5b4a&x=1", "9f8e7d6c5b4a"),
        ("Authorization: Bearer ya29.a0AfH6SMBx3kq7Zp0QvL2", "ya29.a0AfH6SMBx3kq7Zp0QvL2"),
        ("client_secret: P@ss-Word!", "P@ss-Word!"),
        ("stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
    ];
    each_is_one_secret(&cases);
}

#[test]
fn a_url_password_is_found_with_its_user_and_the_host_is_kept() {
    let text = "DATABASE_URL=postgres://app:Zq9!x2@db.internal:5432/prod";
    assert_eq!(kinds(text), vec![(PiiKind::Secret, "app:Zq9!x2")]);
    // A password holding `@`, and an empty user (Redis).
    assert_eq!(kinds("postgres://app:p@ssw0rd@db.prod/x"), vec![(PiiKind::Secret, "app:p@ssw0rd")]);
    assert_eq!(kinds("redis://:Xk9mQ2vLp7@cache.prod:6379"), vec![(PiiKind::Secret, ":Xk9mQ2vLp7")]);
}

#[test]
fn a_long_named_token_is_found_whole() {
    // Checked on its first characters, redacted to its end: a JWT or a session token longer
    // than the check's window must not leak its tail.
    let jwt = format!("eyJhbGciOiJSUzI1NiJ9.eyJ{}.sig{}", "a1B2".repeat(300), "Z9".repeat(50));
    for text in [format!("Authorization: Bearer {jwt}"), format!("id_token: {jwt}"), format!("aws_session_token = IQoJ{}", "b3Kx".repeat(150))] {
        let value = text.rsplit(' ').next().unwrap();
        assert_eq!(kinds(&text), vec![(PiiKind::Secret, value)], "{}", &text[..40]);
    }
}

#[test]
fn more_secret_shapes_are_found() {
    let cases = [
        ("DB_PASS=Xk9mQ2vLp7", "Xk9mQ2vLp7"),
        ("machine db.prod login app password Xk9mQ2vLp7", "Xk9mQ2vLp7"),
        ("mysqldump --password S3cr3t!x prod", "S3cr3t!x"),
        (r#"{"pass": "correcthorsebatterystaple"}"#, "correcthorsebatterystaple"),
        ("Authorization: Basic YWRtaW46c2VjcmV0MTIz", "YWRtaW46c2VjcmV0MTIz"),
        ("Authorization: Token 9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b", "9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b"),
        ("SECRET_KEY_BASE=9f86d081884c7d659a2feaa0c55ad015", "9f86d081884c7d659a2feaa0c55ad015"),
        ("login with hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"),
        ("token glpat-Xy12abCD34efGH56ijKL", "glpat-Xy12abCD34efGH56ijKL"),
        (r#"bot = Bot("6123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw")"#, "6123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"),
        ("GET https://api.telegram.org/bot6123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/sendMessage", "bot6123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"),
        ("post to https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX now", "hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"),
    ];
    each_is_one_secret(&cases);
}

#[test]
fn references_measures_and_defaults_after_a_secret_name_are_not_secrets() {
    no_secret_in(&[
        "const token = process.env.GITHUB_TOKEN;",
        "password = opts.Password",
        "val secret = BuildConfig.API_SECRET",
        "token = tok_ids2",
        "WHERE token = :token2",
        "PWD=C:\\Users\\Bob\\repo",
        "secret: arn:aws:secretsmanager:eu-west-1:123456789012:secret:db",
        "per token: 12.5ms",
        "refreshed token: 2024-05-01T12:00:00Z",
        "secret: sha256",
        "token: gpt-4o-mini",
        "token: cl100k_base",
        "secret: my-app-secret-v2",
        "Password: Required",
        "FATAL: password authentication failed for user",
        "the password field is required",
        "amqp://guest:guest@localhost:5672/",
        "postgres://postgres:postgres@localhost/db",
        "redis://default:your_redis_password@cache.example.com:6379",
        "sk_test_xxxxxxxxxxxxxxxxxxxxxxxx",
        "OPENAI_API_KEY=sk-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        "aws AKIAXXXXXXXXXXXXXXXX",
        "pip install sk-video-tools-extension-pack",
    ]);
}

#[test]
fn a_url_password_or_a_git_remote_is_not_an_email() {
    for text in ["mongodb+srv://user:pass@cluster0.x.mongodb.net/db", "[docs](https://user:password@db.example.com)", "git clone git@github.com:acme/w.git"] {
        assert_eq!(kinds(text), vec![], "{text}");
    }
    assert_eq!(kinds("see https://x.io/?email=jane@example.com"), vec![(PiiKind::Email, "jane@example.com")]);
}

#[test]
fn code_placeholders_and_words_after_a_secret_name_are_not_secrets() {
    no_secret_in(&[
        "password = get_password()",
        r#"token = os.environ["API_TOKEN"]"#,
        "password: ${DB_PASSWORD}",
        "api_key: <your-api-key>",
        "password: ********",
        "secret: unlocking potential",
        "password = self.password",
        "max_tokens=256 and token_count: 1500",
        "pwd: /home/alice",
        "postgres://user:password@localhost/db",
        "https://user:${PASS}@example.org/",
        "http://localhost:8080/path?page=2",
    ]);
}

#[test]
fn loopback_networks_and_four_part_versions_are_not_addresses() {
    for text in ["http://127.0.0.1:8000/docs", "allow 192.168.0.0/16", r#"AssemblyVersion("1.0.0.0")"#, "runtime 8.0.0.0", "pkg==1.2.3.4"] {
        assert_eq!(kinds(text), vec![], "{text}");
    }
    assert_eq!(kinds("from 10.0.0.12 at noon"), vec![(PiiKind::IpAddress, "10.0.0.12")]);
}

#[test]
fn credentials_on_a_command_line_or_in_code_are_found() {
    let sendgrid = format!("SG.{}.{}", "aB3dE5gH7jK9mN1pQ3sT5v", "xY2".repeat(14) + "z");
    let cases = [
        ("curl -u admin:Xk9mQ2vLp7 https://api.internal/v1", "Xk9mQ2vLp7"),
        ("curl --user 'deploy:S3cr3t!x' https://ci", "S3cr3t!x"),
        ("curl --user=svc-ci:Tr0ub4dor#3 -X POST", "Tr0ub4dor#3"),
        ("mysql -h db -u root -pXk9mQ2vLp7 prod", "Xk9mQ2vLp7"),
        (r#"requests.get(url, auth=("admin", "Xk9mQ2vLp7"))"#, "Xk9mQ2vLp7"),
        ("HTTPBasicAuth('admin', 'S3cr3t!x')", "S3cr3t!x"),
        (r#"user.setPassword("Hunter2!x");"#, "Hunter2!x"),
        ("password: $ecr3tPa55!", "$ecr3tPa55!"),
        (&format!("SENDGRID_KEY is {sendgrid} here"), &sendgrid),
    ];
    each_is_one_secret(&cases);
}

#[test]
fn options_ports_users_and_code_are_not_command_line_credentials() {
    no_secret_in(&[
        "docker run -u 1000:1000 -p 8080:80 img",
        "docker run -p8080:80 -p127.0.0.1:9090:90 img",
        "ssh -p2222 deploy@host",
        "gcc -pthread -pedantic -O2 main.c",
        "git push -u origin main && git branch -u origin/main",
        "tar -pczf backup.tgz dir && mkdir -p /tmp/x",
        "pytest -pno:cacheprovider tests",
        "curl -u admin:admin http://localhost:9200",
        "curl -u user:password https://example.com",
        "curl -u $USER:$TOKEN https://api",
        r#"auth=("user", "pass")"#,
        "auth=(username, password)",
        "count = len(token(text))",
        "pw = getPassword(user)",
        r#"password = ask_password("Password: ")"#,
        "password: $DB_PASSWORD",
        "SG.example.key",
    ]);
}
