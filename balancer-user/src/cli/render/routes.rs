//! `balancer route stats`.

use balancer::{api::RouteStatsRow, route::tier::Tier};

use super::table::{Align, render};

/// Requests and shed requests per route and tier, one row a tier.
pub fn stats(rows: &[RouteStatsRow]) -> String {
    if rows.is_empty() {
        return "no routes (the daemon's configuration has no [[route]])\n".into();
    }
    let headers = [
        ("route", Align::Left),
        ("tier", Align::Left),
        ("requests", Align::Right),
        ("shed", Align::Right),
    ];
    let get = |m: &std::collections::BTreeMap<String, u64>, t: Tier| {
        m.get(t.label()).copied().unwrap_or(0).to_string()
    };
    let body: Vec<Vec<String>> = rows
        .iter()
        .flat_map(|r| {
            Tier::ALL.iter().map(move |t| {
                vec![
                    r.route.clone(),
                    t.label().to_string(),
                    get(&r.requests_by_tier, *t),
                    get(&r.shed_by_tier, *t),
                ]
            })
        })
        .collect();
    let mut out = String::from(
        "requests by priority tier since the daemon started, and of them those shed (429)\n",
    );
    out.push_str(&render(&headers, &body));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_aligned_row_a_route_and_tier() {
        let row = RouteStatsRow {
            route: "openai".into(),
            requests_by_tier: [
                ("critical".to_string(), 12),
                ("sheddable".to_string(), 3400),
            ]
            .into(),
            shed_by_tier: [("sheddable".to_string(), 700)].into(),
        };
        assert_eq!(
            stats(&[row]),
            "requests by priority tier since the daemon started, and of them those shed (429)\n\
             route   tier       requests  shed\n\
             openai  critical         12     0\n\
             openai  standard          0     0\n\
             openai  sheddable      3400   700\n"
        );
        assert!(stats(&[]).starts_with("no routes"));
    }
}
