//! Which proxy each AWS call takes, from the environment's variables.

use super::*;

fn proxies(variables: &[(&str, &str)]) -> Result<Proxies, ProxyError> {
    Proxies::from_lookup(|name| {
        variables
            .iter()
            .find(|(variable, _)| *variable == name)
            .map(|(_, value)| (*value).to_owned())
    })
}

fn shown(proxy: &Option<Proxy>) -> Option<String> {
    proxy.as_ref().map(Proxy::to_string)
}

#[test]
fn the_upper_case_variable_wins_and_an_empty_one_counts_as_unset() {
    // The variables; then the HTTPS proxy, the HTTP proxy and NO_PROXY read from them.
    type Case = (
        &'static [(&'static str, &'static str)],
        Option<&'static str>,
        Option<&'static str>,
        &'static str,
    );
    let table: &[Case] = &[
        (&[], None, None, ""),
        (
            &[("HTTPS_PROXY", "http://a:1"), ("https_proxy", "http://b:2")],
            Some("http://a:1 (HTTPS_PROXY)"),
            None,
            "",
        ),
        (
            &[("https_proxy", "http://b:2")],
            Some("http://b:2 (https_proxy)"),
            None,
            "",
        ),
        (
            &[("HTTPS_PROXY", " "), ("https_proxy", "http://b:2")],
            Some("http://b:2 (https_proxy)"),
            None,
            "",
        ),
        (
            &[("http_proxy", "http://c:3"), ("no_proxy", ".internal")],
            None,
            Some("http://c:3 (http_proxy)"),
            ".internal",
        ),
        (
            &[
                ("HTTP_PROXY", "http://c:3"),
                ("HTTPS_PROXY", "http://a:1"),
                ("NO_PROXY", "10.0.0.0/8"),
                ("no_proxy", "ignored"),
            ],
            Some("http://a:1 (HTTPS_PROXY)"),
            Some("http://c:3 (HTTP_PROXY)"),
            "10.0.0.0/8",
        ),
    ];
    for (variables, https, http, no_proxy) in table {
        let read = proxies(variables).expect("valid");
        assert_eq!(shown(&read.https).as_deref(), *https, "{variables:?}");
        assert_eq!(shown(&read.http).as_deref(), *http, "{variables:?}");
        assert_eq!(read.no_proxy, *no_proxy, "{variables:?}");
    }
}

#[test]
fn a_proxy_is_shown_without_credentials_and_without_a_scheme_means_http() {
    let table = [
        (
            "http://user:secret@proxy.corp:3128",
            "http://proxy.corp:3128 (HTTPS_PROXY)",
        ),
        ("proxy.corp:3128", "http://proxy.corp:3128 (HTTPS_PROXY)"),
        (
            "http://proxy.corp:3128/",
            "http://proxy.corp:3128 (HTTPS_PROXY)",
        ),
        ("https://proxy.corp", "https://proxy.corp (HTTPS_PROXY)"),
        (
            "http://[fd00::1]:8080",
            "http://[fd00::1]:8080 (HTTPS_PROXY)",
        ),
    ];
    for (value, expected) in table {
        let read = proxies(&[("HTTPS_PROXY", value)]).expect("valid");
        assert_eq!(shown(&read.https).as_deref(), Some(expected), "{value}");
    }
}

#[test]
fn a_malformed_proxy_is_refused_naming_the_variable_not_the_value() {
    for (variable, value) in [
        ("HTTPS_PROXY", "http://user:secret@"),
        ("https_proxy", "socks5://proxy:1080"),
        ("http_proxy", "http://pro xy:3128"),
    ] {
        let error = proxies(&[(variable, value)]).expect_err(value).to_string();
        assert!(
            error.starts_with(&format!("{variable} is not an HTTP proxy URL")),
            "{error}"
        );
        assert!(!error.contains("secret"), "{error}");
    }
}

#[test]
fn the_nodes_own_endpoints_go_direct_whatever_no_proxy_says() {
    let read = proxies(&[
        ("HTTPS_PROXY", "http://proxy:3128"),
        ("HTTP_PROXY", "http://proxy:3128"),
        (
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            "http://198.18.0.1:4100",
        ),
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "http://169.254.170.23/v1/credentials",
        ),
    ])
    .expect("valid");
    let table = [
        ("http://169.254.169.254/latest/api/token", Route::Direct),
        ("http://[fd00:ec2::254]/latest/meta-data/", Route::Direct),
        ("http://[FD00:EC2::254]:80/latest/meta-data/", Route::Direct),
        ("http://198.18.0.1:4100/latest/meta-data/", Route::Direct),
        ("http://169.254.170.23/v1/credentials", Route::Direct),
        // Another port of the same host is not the metadata endpoint.
        ("https://198.18.0.1:4101/", Route::Https),
        ("http://198.18.0.1:4101/", Route::Http),
        ("http://169.254.169.254:8080/", Route::Http),
        ("https://ec2.us-east-2.amazonaws.com/", Route::Https),
        ("https://sts.us-east-2.amazonaws.com/", Route::Https),
        ("http://ec2.us-east-2.amazonaws.com/", Route::Http),
    ];
    for (url, route) in table {
        assert_eq!(read.route(url), route, "{url}");
    }
}
