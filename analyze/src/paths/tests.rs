use super::collapse;

#[test]
fn collapses_many_ids_under_one_prefix() {
    let got = collapse(
        [
            "/api/orders/1",
            "/api/orders/2",
            "/api/orders/3",
            "/api/orders",
            "/health",
        ],
        3,
    );
    assert_eq!(got, ["/api/orders", "/api/orders/*", "/health"]);
}

#[test]
fn keeps_few_values_exact() {
    let got = collapse(["/api/orders/1", "/api/orders/2", "/api/items"], 3);
    assert_eq!(got, ["/api/items", "/api/orders/1", "/api/orders/2"]);
}

#[test]
fn deeper_variety_collapses_at_the_first_wide_level() {
    let got = collapse(
        [
            "/api/orders/1/items",
            "/api/orders/2/items",
            "/api/orders/3/lines/4",
        ],
        3,
    );
    assert_eq!(got, ["/api/orders/*"]);
}

#[test]
fn never_collapses_the_root() {
    let got = collapse(["/a", "/b", "/c", "/d", "/"], 3);
    assert_eq!(got, ["/", "/a", "/b", "/c", "/d"]);
}
