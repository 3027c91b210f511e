-- The demo's small shop for MariaDB: the same four tables as demo-shop.sql,
-- in MySQL types (unsigned keys, ENUM, JSON, DATETIME(6)). Rows come from
-- MariaDB's Sequence engine (seq_1_to_N tables).
CREATE TABLE customers (
    id         INT UNSIGNED AUTO_INCREMENT PRIMARY KEY,
    name       VARCHAR(100) NOT NULL,
    email      VARCHAR(120) UNIQUE,
    country    CHAR(2),
    created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) CHARACTER SET utf8mb4;
CREATE TABLE products (
    id         INT UNSIGNED AUTO_INCREMENT PRIMARY KEY,
    sku        UUID NOT NULL DEFAULT UUID(),
    title      VARCHAR(200) NOT NULL,
    price      DECIMAL(10,2) NOT NULL,
    tags       SET('tag0','tag1','tag2','tag3','tag4','tag5','tag6'),
    attributes JSON
) CHARACTER SET utf8mb4;
CREATE TABLE orders (
    id          BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY,
    customer_id INT UNSIGNED NOT NULL,
    status      ENUM('new','paid','shipped','delivered') NOT NULL DEFAULT 'new',
    total       DECIMAL(12,2) NOT NULL DEFAULT 0,
    placed_on   DATE NOT NULL DEFAULT (CURRENT_DATE),
    updated_at  DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) CHARACTER SET utf8mb4;
CREATE TABLE order_items (
    order_id   BIGINT UNSIGNED NOT NULL,
    line       INT NOT NULL,
    product_id INT UNSIGNED NOT NULL,
    quantity   SMALLINT NOT NULL,
    unit_price DECIMAL(10,2) NOT NULL,
    PRIMARY KEY (order_id, line)
) CHARACTER SET utf8mb4;

INSERT INTO customers (name, email, country)
SELECT CONCAT('customer ', seq), CONCAT('c', seq, '@example.org'), ELT(1 + seq % 5, 'DE', 'FR', 'US', 'BR', 'JP')
FROM seq_1_to_5000;

INSERT INTO products (title, price, tags, attributes)
SELECT CONCAT('product ', seq), ROUND(5 + RAND(seq) * 195, 2),
       CONCAT('tag', seq % 7), JSON_OBJECT('weight_g', 100 + seq % 900, 'color', ELT(1 + seq % 3, 'red', 'green', 'blue'))
FROM seq_1_to_500;

INSERT INTO orders (customer_id, status, placed_on)
SELECT 1 + (seq * 7919) % 5000, ELT(1 + seq % 4, 'new', 'paid', 'shipped', 'delivered'),
       DATE '2025-01-01' + INTERVAL (seq % 365) DAY
FROM seq_1_to_50000;

INSERT INTO order_items (order_id, line, product_id, quantity, unit_price)
SELECT o.id, l.seq, p.id, 1 + (o.id + l.seq) % 4, p.price
FROM orders o JOIN seq_1_to_3 l JOIN products p ON p.id = 1 + (o.id * 31 + l.seq) % 500;

UPDATE orders o JOIN (SELECT order_id, SUM(quantity * unit_price) AS total FROM order_items GROUP BY 1) s
  ON s.order_id = o.id
SET o.total = s.total;
